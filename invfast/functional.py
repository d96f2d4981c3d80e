"""invfast's ops as functions: argument checks, then a kernel or the reference."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _ops, reference

_MODES = ("bilinear", "nearest")
_PADDINGS = ("zeros", "border", "reflection", "fill")
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_tensor(name: str, value, op: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(value).__name__}")


def _check_choice(name: str, value, choices: Sequence[str], op: str) -> None:
    if value not in choices:
        options = ", ".join(map(repr, choices))
        raise ValueError(f"{op}: {name} must be one of {options}, got {value!r}")


def _check_warp_args(images, matrices, mode, padding_mode, size, op="affine_warp"):
    _check_tensor("images", images, op)
    _check_tensor("matrices", matrices, op)
    if images.dim() != 4:
        raise ValueError(f"{op}: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype not in _KERNEL_DTYPES + (torch.uint8,):
        raise TypeError(
            f"{op}: images must be float32, float64, float16, bfloat16 or uint8, got {images.dtype}"
        )
    if matrices.dim() != 3 or tuple(matrices.shape[1:]) not in ((2, 3), (3, 3)):
        raise ValueError(
            f"{op}: matrices must be (B, 2, 3) or (B, 3, 3), got shape {tuple(matrices.shape)}"
        )
    if matrices.shape[0] != images.shape[0]:
        raise ValueError(
            f"{op}: matrices must have one matrix per image ({images.shape[0]}), "
            f"got {matrices.shape[0]}"
        )
    if not matrices.is_floating_point():
        raise TypeError(f"{op}: matrices must be a floating-point tensor, got {matrices.dtype}")
    if matrices.device != images.device:
        raise ValueError(
            f"{op}: images and matrices must be on one device, "
            f"got {images.device} and {matrices.device}"
        )
    _check_choice("mode", mode, _MODES, op)
    _check_choice("padding_mode", padding_mode, _PADDINGS, op)
    if size is None:
        return (images.shape[2], images.shape[3])
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        or size[0] < 0
        or size[1] < 0
    ):
        raise ValueError(f"{op}: size must be two non-negative ints (H', W'), got {size!r}")
    return (int(size[0]), int(size[1]))


def _check_out(out, expected_shape, images, op):
    _check_tensor("out", out, op)
    if tuple(out.shape) != tuple(expected_shape):
        raise ValueError(
            f"{op}: out must have shape {tuple(expected_shape)}, got {tuple(out.shape)}"
        )
    if out.dtype != images.dtype or out.device != images.device:
        raise ValueError(
            f"{op}: out must be {images.dtype} on {images.device}, got {out.dtype} on {out.device}"
        )
    if torch.is_grad_enabled() and images.requires_grad:
        raise RuntimeError(f"{op}: out= does not support autograd; call it under torch.no_grad()")


def affine_warp(
    images: torch.Tensor,
    matrices: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    fill: float = 0.0,
    size: tuple[int, int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warps each image by its own affine matrix, in one fused pass.

    Output pixel ``(u, v)`` samples the input at ``M^-1 (u, v, 1)``: the matrix
    maps input pixel positions to output pixel positions, pixel centres at
    integer coordinates (OpenCV's ``warpAffine`` convention). No sampling grid
    is built in memory.

    Args:
        images (Tensor[B, C, H, W]): float32, float64, float16 or bfloat16
            (uint8 runs the reference), contiguous or channels_last, on CPU or CUDA.
        matrices (Tensor[B, 2, 3] or Tensor[B, 3, 3]): floating point, on the
            images' device. Only the top two rows of a 3x3 are used.
        mode (str): ``"bilinear"`` or ``"nearest"``. Default: ``"bilinear"``.
        padding_mode (str): what positions outside the image read:
            ``"zeros"``, ``"border"`` (the nearest edge pixel), ``"reflection"``
            or ``"fill"`` (the constant ``fill``). Default: ``"zeros"``.
        align_corners (bool): for reflection, mirror about the outer pixel
            centres (True) or the image edges (False); the other modes do not
            depend on it. Default: ``False``.
        fill (float): the value of outside positions for ``padding_mode="fill"``.
        size (tuple[int, int], optional): output ``(H', W')``. Default: ``(H, W)``.
        out (Tensor[B, C, H', W'], optional): a buffer to write into, for
            reuse across steps; not differentiable.

    Returns:
        Tensor[B, C, H', W'] in the images' dtype and memory format.
        Gradients flow to ``images`` through a fused backward kernel; when
        ``matrices`` requires grad the reference computes both gradients.
    """
    op = "affine_warp"
    size = _check_warp_args(images, matrices, mode, padding_mode, size)
    fill = float(fill)
    if out is not None:
        _check_out(out, (images.shape[0], images.shape[1], *size), images, op)

    unsupported = None
    if images.dtype not in _KERNEL_DTYPES:
        unsupported = f"images of dtype {images.dtype} are not supported by the kernel"
    elif matrices.requires_grad and torch.is_grad_enabled():
        unsupported = "the kernel has no gradient with respect to matrices"
    if not _ops.use_kernel(op, images.device, unsupported):
        result = reference.affine_warp(
            images,
            matrices,
            mode=mode,
            padding_mode=padding_mode,
            align_corners=align_corners,
            fill=fill,
            size=size,
        )
        return result if out is None else out.copy_(result)

    if out is not None:
        torch.ops.invfast.affine_warp_out(
            images, matrices, mode, padding_mode, align_corners, fill, out
        )
        return out
    return torch.ops.invfast.affine_warp(
        images, matrices, mode, padding_mode, align_corners, fill, list(size)
    )
