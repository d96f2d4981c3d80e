"""The affine warp with ``affine_grid`` + ``grid_sample``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import geometry


def _to_normalized(size: int, align_corners: bool) -> tuple[float, float]:
    """(scale, offset) of the map from pixel position p to grid_sample's n = scale p + offset."""
    if align_corners:
        # NOTE: a single pixel has no span; every n then reads pixel 0 anyway.
        return (2.0 / (size - 1) if size > 1 else 0.0), -1.0
    return 2.0 / size, 1.0 / size - 1.0


def _from_normalized(size: int, align_corners: bool) -> tuple[float, float]:
    """(scale, offset) of the map from affine_grid's n to pixel position p."""
    if align_corners:
        return (size - 1) / 2.0, (size - 1) / 2.0
    return size / 2.0, (size - 1) / 2.0


def _diag(sx, sy, ox, oy, like):
    m = torch.zeros(3, 3, dtype=like.dtype, device=like.device)
    m[0, 0], m[1, 1], m[0, 2], m[1, 2], m[2, 2] = sx, sy, ox, oy, 1.0
    return m


def affine_warp(
    images: torch.Tensor,
    matrices: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    fill: float = 0.0,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Reference of :func:`invfast.affine_warp` (same arguments, same result)."""
    B, C, H, W = images.shape
    Ho, Wo = (H, W) if size is None else (int(size[0]), int(size[1]))
    out_dtype = images.dtype
    if not images.is_floating_point():
        x = images.float()
    else:
        x = images
    if B == 0 or C == 0 or Ho == 0 or Wo == 0:
        return images.new_empty((B, C, Ho, Wo))
    if H == 0 or W == 0:
        out = x.new_full((B, C, Ho, Wo), fill if padding_mode == "fill" else 0.0)
        return _cast(out, out_dtype)

    # Only reflection depends on align_corners in pixel space; the other modes
    # use grid_sample's align_corners=False normalisation, which has no
    # degenerate case at size 1.
    ac = align_corners and padding_mode == "reflection"
    inv = geometry.invert(geometry.as_3x3(matrices.to(torch.float64)))
    sx, ox = _to_normalized(W, ac)
    sy, oy = _to_normalized(H, ac)
    tx, px = _from_normalized(Wo, ac)
    ty, py = _from_normalized(Ho, ac)
    theta = _diag(sx, sy, ox, oy, inv) @ inv @ _diag(tx, ty, px, py, inv)
    grid = F.affine_grid(theta[:, :2].to(x.dtype), [B, C, Ho, Wo], align_corners=ac)

    # NOTE: a non-finite position (from a singular or non-finite matrix) reads
    # nothing and yields the fill value (0 unless padding_mode is "fill").
    bad = ~torch.isfinite(grid).all(dim=-1, keepdim=True)
    grid = torch.where(bad, torch.full_like(grid, -8.0), grid)

    pad = "zeros" if padding_mode == "fill" else padding_mode
    if padding_mode == "fill" and fill != 0.0:
        out = F.grid_sample(x - fill, grid, mode=mode, padding_mode=pad, align_corners=ac) + fill
    else:
        out = F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=ac)
    value = fill if padding_mode == "fill" else 0.0
    out = torch.where(bad.squeeze(-1).unsqueeze(1), torch.full_like(out, value), out)
    return _cast(out, out_dtype)


def _cast(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        # NOTE: integer output rounds to nearest and saturates, never wraps.
        return out.round().clamp_(0, 255).to(dtype)
    return out.to(dtype)
