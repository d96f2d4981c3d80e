"""The input step: uint8 NHWC batches to normalised float NCHW, warped; and K views."""

from __future__ import annotations

import torch

from .. import functional, reference
from ..augment import RandomAffine
from .runner import Case, Provider

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SHAPES = [(256, 224), (256, 64)]
QUICK_SHAPES = [(8, 32)]


def chain(nhwc: torch.Tensor, matrices: torch.Tensor, mean, std) -> torch.Tensor:
    """What a training loop does without invfast: convert, permute, normalise, warp."""
    x = nhwc.permute(0, 3, 1, 2).float().div_(255)
    x = (x - mean) / std
    return reference.affine_warp(x, matrices)


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    aug = RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=10)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    for B, side in QUICK_SHAPES if quick else SHAPES:
        g = torch.Generator().manual_seed(0)
        nhwc = torch.randint(0, 256, (B, side, side, 3), generator=g, dtype=torch.uint8)
        nhwc = nhwc.to(device)
        nchw_view = nhwc.permute(0, 3, 1, 2)
        m = aug.sample_matrices(nchw_view, generator=torch.Generator(device).manual_seed(1))
        m2 = torch.stack([m, m.flip(0)])

        def fused(n=nhwc, m=m):
            return functional.warp_normalize(n, m, MEAN, STD, nhwc=True)

        def fused_two_views(n=nhwc, m=m2):
            return functional.warp_normalize(n, m, MEAN, STD, nhwc=True)

        def fused_two_calls(n=nhwc, m=m2):
            return [functional.warp_normalize(n, v, MEAN, STD, nhwc=True) for v in m]

        buf = torch.empty(B, 3, side, side, device=device)

        def fused_out(n=nhwc, m=m, b=buf):
            return functional.warp_normalize(n, m, MEAN, STD, nhwc=True, out=b)

        providers = [
            Provider("invfast warp_normalize", fused),
            Provider("invfast warp_normalize, out=", fused_out),
            Provider(
                "reference chain (float, permute, normalise, grid_sample)",
                lambda n=nhwc, m=m: chain(n, m, mean, std),
            ),
        ]
        try:
            import kornia

            def kornia_chain(n=nhwc, m=m, side=side):
                x = kornia.enhance.normalize(
                    n.permute(0, 3, 1, 2).float() / 255, mean.flatten(), std.flatten()
                )
                return kornia.geometry.transform.warp_affine(x, m, (side, side), align_corners=True)

            providers.append(Provider("kornia normalize + warp_affine", kornia_chain))
        except ImportError:
            pass
        if not quick:
            compiled = torch.compile(chain, dynamic=False)
            providers.append(
                Provider(
                    "torch.compile(reference chain)",
                    lambda n=nhwc, m=m, f=compiled: f(n, m, mean, std),
                )
            )
        nbytes = nhwc.numel() * (1 + 4)  # read uint8, write float32
        name = f"uint8 NHWC -> normalised fp32 NCHW, B={B}, 3x{side}x{side}"
        out.append(Case("inputs", name, B, "images", nbytes, providers, device))
        views = [
            Provider("invfast, 2 views in one call", fused_two_views),
            Provider("invfast, 2 separate calls", fused_two_calls),
        ]
        name = f"two views of uint8 NHWC, B={B}, 3x{side}x{side}"
        out.append(Case("inputs", name, B, "images", 2 * nbytes, views, device))
    return out
