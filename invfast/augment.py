"""Random geometric augmentation with per-sample parameters drawn on the device."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from . import functional, geometry


def _range(name, value, *, center=0.0, bounds=None):
    """Normalises a scalar (symmetric about `center`) or a (lo, hi) pair."""
    if value is None:
        return None
    if isinstance(value, numbers.Number):
        if value < 0:
            raise ValueError(f"{name}: a single value must be non-negative, got {value}")
        lo, hi = center - value, center + value
    elif isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}")
    if lo > hi:
        raise ValueError(f"{name} must have min <= max, got ({lo}, {hi})")
    if bounds is not None and (lo < bounds[0] or hi > bounds[1]):
        raise ValueError(f"{name} must lie within {bounds}, got ({lo}, {hi})")
    return float(lo), float(hi)


def _probability(name, value):
    if not isinstance(value, numbers.Number) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


class RandomAffine(nn.Module):
    """Per-sample random rotation, shift, zoom, shear and horizontal flip.

    Every sample of a batch gets its own parameters, drawn on the images'
    device (no host sync), and the batch is warped by one fused kernel
    (:func:`invfast.affine_warp`). Parameter ranges follow torchvision's
    ``RandomAffine``.

    Args:
        degrees (float or (float, float)): rotation range in degrees,
            counter-clockwise on screen; a number ``d`` means ``(-d, d)``.
        translate ((float, float), optional): largest shift as a fraction of
            width and height; shifts are drawn from ``[-a W, a W] x [-b H, b H]``.
        scale ((float, float), optional): zoom range. Default: no zoom.
        shear (float or sequence, optional): x-shear range in degrees (a number
            ``s`` means ``(-s, s)``), or four numbers for x and y ranges.
        hflip (float): probability of a left-right mirror. Default: 0.5.
        p (float): probability that a sample is transformed at all. Default: 1.
        mode, padding_mode, align_corners, fill: passed to :func:`invfast.affine_warp`.

    Shape:
        - Input: ``(B, C, H, W)``.
        - Output: ``(B, C, H, W)``, and ``(B, 2, 3)`` matrices with
          ``return_matrices=True``.

    Example:
        >>> aug = RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.8, 1.2))
        >>> views, matrices = aug(torch.rand(8, 3, 32, 32), return_matrices=True)
        >>> torch.equal(views, invfast.affine_warp(images, matrices))  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        degrees=0.0,
        translate=None,
        scale=None,
        shear=None,
        hflip: float = 0.5,
        p: float = 1.0,
        *,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        align_corners: bool = False,
        fill: float = 0.0,
    ):
        super().__init__()
        self.degrees = _range("degrees", degrees)
        if translate is not None:
            if not (isinstance(translate, Sequence) and len(translate) == 2):
                raise ValueError(f"translate must be a (fx, fy) pair, got {translate!r}")
            for t in translate:
                if not 0.0 <= t <= 1.0:
                    raise ValueError(f"translate fractions must lie in [0, 1], got {translate!r}")
            translate = (float(translate[0]), float(translate[1]))
        self.translate = translate
        self.scale = _range("scale", scale, bounds=(0.0, float("inf")))
        if self.scale is not None and self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if shear is not None and isinstance(shear, Sequence) and len(shear) == 4:
            self.shear = (_range("shear", shear[:2]), _range("shear", shear[2:]))
        else:
            self.shear = (_range("shear", shear), None)
        self.hflip = _probability("hflip", hflip)
        self.p = _probability("p", p)
        self.mode, self.padding_mode = mode, padding_mode
        self.align_corners, self.fill = align_corners, fill

    def sample_matrices(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draws one ``(2, 3)`` matrix per sample, float32 on the images' device."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(
                f"RandomAffine: images must be (B, C, H, W), got {getattr(images, 'shape', images)}"
            )
        B, _, H, W = images.shape
        u = torch.rand(B, 8, generator=generator, device=images.device, dtype=torch.float32)

        def draw(col, rng, default):
            if rng is None:
                return torch.full((B,), default, device=images.device)
            return rng[0] + (rng[1] - rng[0]) * u[:, col]

        angle = draw(0, self.degrees, 0.0)
        if self.translate is not None:
            tx = (2 * u[:, 1] - 1) * (self.translate[0] * W)
            ty = (2 * u[:, 2] - 1) * (self.translate[1] * H)
        else:
            tx = ty = torch.zeros(B, device=images.device)
        scale = draw(3, self.scale, 1.0)
        shear = torch.stack([draw(4, self.shear[0], 0.0), draw(5, self.shear[1], 0.0)], dim=-1)
        flip = u[:, 6] < self.hflip
        matrices = geometry.affine_matrices(
            H,
            W,
            angle=angle,
            translate=torch.stack([tx, ty], dim=-1),
            scale=scale,
            shear=shear,
            hflip=flip,
        )
        if self.p < 1.0:
            identity = torch.eye(2, 3, device=images.device).expand_as(matrices)
            matrices = torch.where((u[:, 7] < self.p)[:, None, None], matrices, identity)
        return matrices

    def forward(
        self,
        images: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        return_matrices: bool = False,
    ):
        matrices = self.sample_matrices(images, generator=generator)
        views = functional.affine_warp(
            images,
            matrices,
            mode=self.mode,
            padding_mode=self.padding_mode,
            align_corners=self.align_corners,
            fill=self.fill,
        )
        return (views, matrices) if return_matrices else views

    def extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"shear={self.shear}, hflip={self.hflip}, p={self.p}, mode={self.mode!r}, "
            f"padding_mode={self.padding_mode!r}"
        )
