"""The augmentation step: draw per-sample random affine + flip parameters and warp."""

from __future__ import annotations

import functools

import torch

from .. import reference
from ..augment import RandomAffine
from .runner import Case, Provider
from .warp import QUICK_SHAPES, SHAPES

PARAMS = dict(degrees=30, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=10)


def peers(images: torch.Tensor) -> list[Provider]:
    out = []
    try:
        import kornia.augmentation as K

        k = torch.nn.Sequential(K.RandomHorizontalFlip(p=0.5), K.RandomAffine(**PARAMS, p=1.0))
        out.append(Provider("kornia RandomHorizontalFlip + RandomAffine", lambda: k(images)))
    except ImportError:
        pass
    try:
        from torchvision.transforms import v2

        tv = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomAffine(**PARAMS)])

        # torchvision draws one set of parameters per call: per-sample means a loop.
        def per_sample():
            return torch.stack([tv(i) for i in images])

        out.append(Provider("torchvision v2, per sample (loop)", per_sample))
        out.append(Provider("torchvision v2, one transform per batch", lambda: tv(images)))
    except ImportError:
        pass
    return out


def reference_step(aug: RandomAffine, images: torch.Tensor) -> torch.Tensor:
    """The plain-PyTorch chain end to end: the reference draws the matrices too."""
    B, _, H, W = images.shape
    u = torch.rand(B, RandomAffine._DRAWS, device=images.device, dtype=torch.float64)
    matrices = aug.reference_matrices(u, (H, W))
    return reference.affine_warp(images, matrices, **aug.warp_options())


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    aug = RandomAffine(**PARAMS, hflip=0.5)

    for B, side in QUICK_SHAPES if quick else SHAPES:
        images = torch.rand(B, 3, side, side, generator=torch.Generator().manual_seed(0))
        images = images.to(device)
        buf = torch.empty_like(images)
        providers = [
            Provider("invfast RandomAffine", lambda i=images: aug(i)),
            Provider("invfast RandomAffine, out=", lambda i=images, b=buf: aug(i, out=b)),
            Provider(
                "reference (affine_grid + grid_sample)",
                functools.partial(reference_step, aug, images),
            ),
            *peers(images),
        ]
        if not quick:
            compiled = torch.compile(functools.partial(reference_step, aug), dynamic=False)
            providers.append(
                Provider("torch.compile(reference)", lambda i=images, f=compiled: f(i))
            )
        nbytes = 2 * images.numel() * images.element_size()
        name = f"random affine + flip, B={B}, 3x{side}x{side} float32"
        out.append(Case("augment", name, B, "images", nbytes, providers, device))
    return out
