"""The warp alone: given per-sample matrices, warp a float32 batch."""

from __future__ import annotations

import torch

from .. import functional, reference
from ..augment import RandomAffine
from .runner import Case, Provider

SHAPES = [(64, 224), (256, 64)]
QUICK_SHAPES = [(8, 32)]


def draw(B: int, side: int, device: str):
    images = torch.rand(B, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    aug = RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=10)
    g = torch.Generator(device=device).manual_seed(0)
    return images, aug.sample_matrices(images, generator=g)


def kornia_provider(images, matrices):
    try:
        from kornia.geometry.transform import warp_affine
    except ImportError:
        return []
    size = tuple(images.shape[-2:])
    return [
        Provider(
            "kornia warp_affine",
            lambda: warp_affine(images, matrices, size, align_corners=True),
        )
    ]


def compiled_provider(fn, name, quick):
    """torch.compile of the reference; left out of quick runs (compiling takes minutes)."""
    if quick:
        return []
    return [Provider(name, torch.compile(fn, dynamic=False))]


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    for B, side in QUICK_SHAPES if quick else SHAPES:
        images, matrices = draw(B, side, device)
        buf = torch.empty_like(images)
        nbytes = 2 * images.numel() * images.element_size()
        providers = [
            Provider(
                "invfast affine_warp", lambda i=images, m=matrices: functional.affine_warp(i, m)
            ),
            Provider(
                "invfast affine_warp, out=",
                lambda i=images, m=matrices, b=buf: functional.affine_warp(i, m, out=b),
            ),
            Provider(
                "reference (affine_grid + grid_sample)",
                lambda i=images, m=matrices: reference.affine_warp(i, m),
            ),
            *kornia_provider(images, matrices),
            *compiled_provider(
                lambda i=images, m=matrices: reference.affine_warp(i, m),
                "torch.compile(reference)",
                quick,
            ),
        ]
        name = f"B={B}, 3x{side}x{side} float32, per-sample matrices"
        out.append(Case("warp", name, B, "images", nbytes, providers, device))
    return out
