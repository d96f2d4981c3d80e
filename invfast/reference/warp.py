"""The affine warp and the normalising warp with ``affine_grid`` + ``grid_sample``."""

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


def _fill_tensor(fill, C: int, like: torch.Tensor) -> torch.Tensor:
    """fill (a number, C numbers or a tensor) as (1, C, 1, 1) in like's dtype and device."""
    t = torch.as_tensor(fill, dtype=like.dtype, device=like.device).flatten()
    return t.expand(C).reshape(1, C, 1, 1) if t.numel() == 1 else t.reshape(1, C, 1, 1)


def affine_warp(
    images: torch.Tensor,
    matrices: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    fill=0.0,
    size: tuple[int, int] | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Reference of :func:`invfast.affine_warp` (same arguments, same result)."""
    kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners, fill=fill)
    if matrices.dim() == 4:
        return torch.stack(
            [affine_warp(images, m, size=size, out_dtype=out_dtype, **kw) for m in matrices]
        )
    B, C, H, W = images.shape
    Ho, Wo = (H, W) if size is None else (int(size[0]), int(size[1]))
    out_dtype = images.dtype if out_dtype is None else out_dtype
    if not images.is_floating_point():
        x = images.float()
    elif images.dtype != torch.float64 and out_dtype == torch.float64:
        x = images.double()
    else:
        x = images
    if B == 0 or C == 0 or Ho == 0 or Wo == 0:
        return images.new_empty((B, C, Ho, Wo), dtype=out_dtype)
    value = _fill_tensor(fill if padding_mode == "fill" else 0.0, C, x)
    if H == 0 or W == 0:
        return _cast(value.expand(B, C, Ho, Wo).clone(), out_dtype)

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
    if padding_mode == "fill":
        # Interpolation weights sum to 1, so sampling x - fill and adding fill
        # back gives the fill value wherever a tap falls outside.
        out = F.grid_sample(x - value, grid, mode=mode, padding_mode=pad, align_corners=ac) + value
    else:
        out = F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=ac)
    out = torch.where(bad.squeeze(-1).unsqueeze(1), value.expand_as(out), out)
    return _cast(out, out_dtype)


def warp_normalize(
    images: torch.Tensor,
    matrices: torch.Tensor,
    mean,
    std,
    *,
    nhwc: bool = False,
    out_dtype: torch.dtype = torch.float32,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    size: tuple[int, int] | None = None,
    fill=0.0,
) -> torch.Tensor:
    """Reference of :func:`invfast.warp_normalize`: warp in float32, then normalise."""
    x = images.permute(0, 3, 1, 2) if nhwc else images
    C = x.shape[1]
    y = affine_warp(
        x.float(),
        matrices,
        mode=mode,
        padding_mode=padding_mode,
        align_corners=align_corners,
        fill=fill,
        size=size,
    )
    m = torch.as_tensor(mean, dtype=torch.float32, device=y.device).reshape(C, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=y.device).reshape(C, 1, 1)
    return ((y / 255.0 - m) / s).to(out_dtype)


def _cast(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        # NOTE: integer output rounds to nearest and saturates, never wraps.
        return out.round().clamp_(0, 255).nan_to_num_(0).to(dtype)
    return out.to(dtype)
