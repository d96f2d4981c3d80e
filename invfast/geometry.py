"""Affine matrices in invfast's convention, and what follows the image.

A matrix maps *input* pixel positions to *output* pixel positions (as OpenCV's
``warpAffine`` and kornia's ``warp_affine`` take it), with pixel centres at
integer coordinates: ``(x, y)`` is column ``x``, row ``y``. Matrices are
``(..., 2, 3)`` or ``(..., 3, 3)``; a 3x3's last row is taken to be
``[0, 0, 1]``.
"""

from __future__ import annotations

import math

import torch


def as_3x3(matrices: torch.Tensor) -> torch.Tensor:
    """The affine part of ``(..., 2, 3)`` or ``(..., 3, 3)`` matrices as ``(..., 3, 3)``."""
    if matrices.shape[-2:] not in ((2, 3), (3, 3)):
        shape = tuple(matrices.shape)
        raise ValueError(f"matrices must be (..., 2, 3) or (..., 3, 3), got {shape}")
    top = matrices[..., :2, :]
    last = torch.zeros_like(top[..., :1, :])
    last[..., 0, 2] = 1.0
    return torch.cat([top, last], dim=-2)


def invert(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse affine maps, in the shape given (``(..., 2, 3)`` or ``(..., 3, 3)``).

    Args:
        matrices (Tensor[..., 2 or 3, 3]): floating-point affine matrices.

    Returns:
        Tensor of the same shape: the map from output back to input positions.
        A singular matrix gives non-finite entries.
    """
    a, b, c = matrices[..., 0, 0], matrices[..., 0, 1], matrices[..., 0, 2]
    d, e, f = matrices[..., 1, 0], matrices[..., 1, 1], matrices[..., 1, 2]
    r = 1.0 / (a * e - b * d)
    ia, ib, id_, ie = e * r, -b * r, -d * r, a * r
    rows = [
        torch.stack([ia, ib, -(ia * c + ib * f)], dim=-1),
        torch.stack([id_, ie, -(id_ * c + ie * f)], dim=-1),
    ]
    if matrices.shape[-2] == 3:
        rows.append(matrices[..., 2, :] * 0 + matrices.new_tensor([0.0, 0.0, 1.0]))
    return torch.stack(rows, dim=-2)


def compose(*matrices: torch.Tensor) -> torch.Tensor:
    """The single matrix that applies ``matrices[0]`` first, then ``matrices[1]``, ...

    Args:
        *matrices (Tensor[..., 2 or 3, 3]): broadcastable stacks of matrices.

    Returns:
        Tensor[..., 3, 3].
    """
    if not matrices:
        raise ValueError("compose: needs at least one matrix")
    out = as_3x3(matrices[0])
    for m in matrices[1:]:
        out = as_3x3(m) @ out
    return out


def transform_points(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Moves points where the warp moves their pixels.

    Args:
        matrices (Tensor[B, 2|3, 3] or Tensor[K, B, 2|3, 3]): the warp's matrices.
        points (Tensor[B, N, 2]): (x, y) in input pixels (column, row).

    Returns:
        Tensor[B, N, 2] (or Tensor[K, B, N, 2]): where each point lands in the output.
    """
    m = as_3x3(matrices).to(points.dtype)
    return points @ m[..., :2, :2].transpose(-1, -2) + m[..., None, :2, 2]


def transform_boxes(matrices: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Axis-aligned boxes that enclose the moved boxes.

    Args:
        matrices (Tensor[B, 2|3, 3] or Tensor[K, B, 2|3, 3]): the warp's matrices.
        boxes (Tensor[B, N, 4]): (x1, y1, x2, y2) in input pixels.

    Returns:
        Tensor[B, N, 4] (or Tensor[K, B, N, 4]).
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack(
        [torch.stack(c, dim=-1) for c in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], dim=-2
    )
    moved = transform_points(matrices, corners.flatten(-3, -2)).unflatten(-2, (-1, 4))
    lo, hi = moved.amin(dim=-2), moved.amax(dim=-2)
    return torch.cat([lo, hi], dim=-1)


def affine_matrices(
    height: int,
    width: int,
    *,
    angle: torch.Tensor,
    translate: torch.Tensor,
    scale: torch.Tensor,
    shear: torch.Tensor,
    hflip: torch.Tensor,
    vflip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Matrices ``(B, 2, 3)`` that flip, scale, shear, rotate and shift about the centre.

    The order is: flips, scale, shear, rotation, then translation, all about
    the image centre ``((width - 1) / 2, (height - 1) / 2)``.

    Args:
        angle (Tensor[B]): rotation in degrees, counter-clockwise as seen on screen.
        translate (Tensor[B, 2]): shift in pixels (x, y).
        scale (Tensor[B]): zoom factor; above 1 enlarges.
        shear (Tensor[B, 2]): shear angles in degrees along x and along y.
        hflip (Tensor[B], bool): mirror left-right first.
        vflip (Tensor[B], bool, optional): mirror top-bottom first.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    rad = angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    shx = torch.tan(shear[:, 0] * (math.pi / 180.0))
    shy = torch.tan(shear[:, 1] * (math.pi / 180.0))
    flip = torch.where(hflip, -1.0, 1.0).to(angle.dtype)
    vf = 1.0 if vflip is None else torch.where(vflip, -1.0, 1.0).to(angle.dtype)
    # Linear part L = R(angle) @ Shear @ diag(scale * flip, scale * vf).
    # R is [[cos, sin], [-sin, cos]]: counter-clockwise with y pointing down.
    s00, s01, s10, s11 = scale * flip, scale * shx * vf, scale * shy * flip, scale * vf
    l00 = cos * s00 + sin * s10
    l01 = cos * s01 + sin * s11
    l10 = -sin * s00 + cos * s10
    l11 = -sin * s01 + cos * s11
    # Keep the centre fixed, then shift: t = c + translate - L c.
    t0 = cx + translate[:, 0] - (l00 * cx + l01 * cy)
    t1 = cy + translate[:, 1] - (l10 * cx + l11 * cy)
    return torch.stack(
        [torch.stack([l00, l01, t0], dim=-1), torch.stack([l10, l11, t1], dim=-1)], dim=-2
    )
