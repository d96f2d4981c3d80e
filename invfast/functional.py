"""invfast's ops as functions: argument checks, then a kernel or the reference."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from . import _ops, reference

_MODES = ("bilinear", "nearest", "bicubic")
_PADDINGS = ("zeros", "border", "reflection", "fill")
_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_CUDA_FILL_CHANNELS = 64


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
    if images.dtype not in _DTYPES:
        raise TypeError(
            f"{op}: images must be float32, float64, float16, bfloat16 or uint8, got {images.dtype}"
        )
    if matrices.dim() not in (3, 4) or tuple(matrices.shape[-2:]) not in ((2, 3), (3, 3)):
        raise ValueError(
            f"{op}: matrices must be (B, 2, 3), (B, 3, 3), (K, B, 2, 3) or (K, B, 3, 3), "
            f"got shape {tuple(matrices.shape)}"
        )
    if matrices.shape[-3] != images.shape[0]:
        raise ValueError(
            f"{op}: matrices must have one matrix per image ({images.shape[0]}) in dim "
            f"{matrices.dim() - 3}, got {matrices.shape[-3]}"
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


def _fill_values(fill, C: int, op: str) -> list[float]:
    """fill as a list of 1 or C floats. NOTE: a CUDA tensor is read back (one host sync)."""
    if isinstance(fill, torch.Tensor):
        values = fill.detach().flatten().tolist()
    elif isinstance(fill, numbers.Number):
        values = [fill]
    elif isinstance(fill, Sequence):
        values = list(fill)
    else:
        raise TypeError(f"{op}: fill must be a number, a sequence or a tensor, got {fill!r}")
    if len(values) not in (1, C) or not all(isinstance(v, numbers.Number) for v in values):
        raise ValueError(f"{op}: fill must be one number or C ({C}) numbers, got {fill!r}")
    return [float(v) for v in values]


def _output_shape(images, matrices, size):
    shape = (images.shape[0], images.shape[1], *size)
    return shape if matrices.dim() == 3 else (matrices.shape[0], *shape)


def _check_out(out, expected_shape, dtype, images, matrices, op):
    _check_tensor("out", out, op)
    if tuple(out.shape) != tuple(expected_shape):
        raise ValueError(
            f"{op}: out must have shape {tuple(expected_shape)}, got {tuple(out.shape)}"
        )
    if out.dtype != dtype or out.device != images.device:
        raise ValueError(
            f"{op}: out must be {dtype} on {images.device}, got {out.dtype} on {out.device}"
        )
    if torch.is_grad_enabled() and (images.requires_grad or matrices.requires_grad):
        raise RuntimeError(f"{op}: out= does not support autograd; call it under torch.no_grad()")


def _kernel_dtype(images_dtype, out_dtype):
    """The output dtype the kernel is asked for; fp64 pairs with fp64 only there."""
    if (images_dtype == torch.float64) == (out_dtype == torch.float64):
        return out_dtype
    return torch.float64 if images_dtype == torch.float64 else torch.float32


def _unsupported(images, fill, padding_mode):
    if (
        images.device.type == "cuda"
        and padding_mode == "fill"
        and len(set(fill)) > 1
        and images.shape[1] > _MAX_CUDA_FILL_CHANNELS
    ):
        return f"a per-channel fill on more than {_MAX_CUDA_FILL_CHANNELS} channels"
    return None


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
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warps each image by its own affine matrix (or K matrices), in one fused pass.

    Output pixel ``(u, v)`` samples the input at ``M^-1 (u, v, 1)``: the matrix
    maps input pixel positions to output pixel positions, pixel centres at
    integer coordinates (OpenCV's ``warpAffine`` convention). No sampling grid
    is built in memory. Arithmetic is in float32 (float64 for float64 images).

    Args:
        images (Tensor[B, C, H, W]): uint8, float16, bfloat16, float32 or
            float64, contiguous or channels_last (any strides), on CPU or CUDA.
        matrices (Tensor[B, 2, 3], Tensor[B, 3, 3], Tensor[K, B, 2, 3] or
            Tensor[K, B, 3, 3]): floating point, on the images' device. Only the
            top two rows of a 3x3 are used. With a leading K, all K views of
            every image are made in one kernel launch; each equals, bit for bit,
            the single-view call with that matrix.
        mode (str): ``"bilinear"``, ``"nearest"`` or ``"bicubic"`` (cubic
            convolution with a = -0.75, as ``grid_sample``). Default: ``"bilinear"``.
        padding_mode (str): what positions outside the image read:
            ``"zeros"``, ``"border"`` (the nearest edge pixel), ``"reflection"``
            or ``"fill"`` (the constant ``fill``). Default: ``"zeros"``.
        align_corners (bool): for reflection, mirror about the outer pixel
            centres (True) or the image edges (False); the other modes do not
            depend on it. Default: ``False``.
        fill (float, sequence of C floats or Tensor[C]): the value of outside
            positions for ``padding_mode="fill"``, per channel or for all. A
            CUDA tensor is read back to the host (one sync). Default: 0.
        size (tuple[int, int], optional): output ``(H', W')``. Default: ``(H, W)``.
        out_dtype (torch.dtype, optional): output dtype; uint8 output is
            rounded to nearest (ties to even) and saturated to [0, 255].
            Default: the images' dtype.
        out (Tensor[B, C, H', W'] or Tensor[K, B, C, H', W'], optional): a
            buffer to write into, for reuse across steps; not differentiable.

    Returns:
        Tensor[B, C, H', W'] (or Tensor[K, B, C, H', W']) in ``out_dtype`` and
        the images' memory format. Gradients flow to floating-point ``images``
        and to ``matrices`` through fused backward kernels (the image gradient
        is bit-for-bit reproducible under ``torch.use_deterministic_algorithms``).
    """
    op = "affine_warp"
    size = _check_warp_args(images, matrices, mode, padding_mode, size)
    if out_dtype is not None and out_dtype not in _DTYPES:
        raise TypeError(f"{op}: out_dtype must be one of {_DTYPES}, got {out_dtype}")
    dtype = images.dtype if out_dtype is None else out_dtype
    fills = _fill_values(fill, images.shape[1], op)
    if out is not None:
        _check_out(out, _output_shape(images, matrices, size), dtype, images, matrices, op)

    if not _ops.use_kernel(op, images.device, _unsupported(images, fills, padding_mode)):
        result = reference.affine_warp(
            images,
            matrices,
            mode=mode,
            padding_mode=padding_mode,
            align_corners=align_corners,
            fill=fills if len(fills) > 1 else fills[0],
            size=size,
            out_dtype=dtype,
        )
        return result if out is None else out.copy_(result)

    kernel_dtype = _kernel_dtype(images.dtype, dtype)
    if out is not None and kernel_dtype == dtype:
        torch.ops.invfast.affine_warp_out(
            images, matrices, mode, padding_mode, align_corners, fills, out
        )
        return out
    result = torch.ops.invfast.affine_warp(
        images, matrices, mode, padding_mode, align_corners, fills, list(size), kernel_dtype
    )
    if kernel_dtype != dtype:
        result = result.to(dtype)
    return result if out is None else out.copy_(result)


def _channel_values(name, value, C, device, op):
    if isinstance(value, torch.Tensor):
        t = value.to(device=device, dtype=torch.float32)
    elif isinstance(value, Sequence) and all(isinstance(v, numbers.Number) for v in value):
        t = torch.tensor([float(v) for v in value], dtype=torch.float32, device=device)
    else:
        raise TypeError(f"{op}: {name} must be a sequence of numbers or a tensor, got {value!r}")
    if t.dim() != 1 or t.shape[0] != C:
        raise ValueError(f"{op}: {name} must hold C ({C}) values, got shape {tuple(t.shape)}")
    return t


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
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warps uint8 images and normalises them, in one pass: the input step of training.

    Every output value is ``(warped / 255 - mean[c]) / std[c]``, with the warp
    computed in float32 from the uint8 pixels (never rounded in between). It
    replaces the usual chain "to float, permute, scale, normalise,
    ``affine_grid``, ``grid_sample``" with one read of the uint8 batch and one
    write of the result.

    NOTE: padded pixels take the value ``fill`` in pixel units ([0, 255];
    0 unless ``padding_mode="fill"``), normalised like every other pixel: a
    zero-padded pixel becomes ``-mean[c] / std[c]``.

    Args:
        images (Tensor[B, C, H, W] or Tensor[B, H, W, C] with ``nhwc=True``):
            uint8, any layout, on CPU or CUDA.
        matrices (Tensor[B, 2|3, 3] or Tensor[K, B, 2|3, 3]): as in :func:`affine_warp`.
        mean (sequence of C floats or Tensor[C]): per-channel mean in [0, 1] units.
        std (sequence of C floats or Tensor[C]): per-channel standard deviation.
        nhwc (bool): images are ``(B, H, W, C)`` (as decoded by most image
            libraries); read in place, without a copy. Default: ``False``.
        out_dtype (torch.dtype): float32, float16 or bfloat16. Default: float32.
        mode, padding_mode, align_corners, size: as in :func:`affine_warp`.
        fill (float, sequence of C floats or Tensor[C]): padding value in
            pixel units for ``padding_mode="fill"``. Default: 0.
        out (Tensor[B, C, H', W'] or Tensor[K, B, C, H', W'], optional): a
            buffer of ``out_dtype`` to write into, for reuse across steps; any
            layout (contiguous NCHW is the fast one). Not differentiable.

    Returns:
        Tensor[B, C, H', W'] (or Tensor[K, B, C, H', W']), contiguous NCHW
        whatever the images' layout. Not
        differentiable with respect to the matrices in the kernel: when
        ``matrices`` requires grad, the reference computes the result.
    """
    op = "warp_normalize"
    _check_tensor("images", images, op)
    if images.dtype != torch.uint8:
        raise TypeError(f"{op}: images must be uint8, got {images.dtype}")
    if images.dim() != 4:
        layout = "(B, H, W, C)" if nhwc else "(B, C, H, W)"
        raise ValueError(f"{op}: images must be {layout}, got shape {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2) if nhwc else images
    size = _check_warp_args(x, matrices, mode, padding_mode, size, op)
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    C = x.shape[1]
    mean_t = _channel_values("mean", mean, C, x.device, op)
    std_t = _channel_values("std", std, C, x.device, op)
    fills = _fill_values(fill, C, op)

    if out is not None:
        _check_out(out, _output_shape(x, matrices, size), out_dtype, x, matrices, op)

    unsupported = _unsupported(x, fills, padding_mode)
    if unsupported is None and matrices.requires_grad and torch.is_grad_enabled():
        unsupported = "the normalising kernel has no gradient with respect to matrices"
    if not _ops.use_kernel(op, x.device, unsupported):
        result = reference.warp_normalize(
            x,
            matrices,
            mean_t,
            std_t,
            out_dtype=out_dtype,
            mode=mode,
            padding_mode=padding_mode,
            align_corners=align_corners,
            size=size,
            fill=fills if len(fills) > 1 else fills[0],
        )
        return result if out is None else out.copy_(result)
    if out is not None:
        torch.ops.invfast.warp_normalize_out(
            x, matrices, mean_t, std_t, mode, padding_mode, align_corners, fills, out
        )
        return out
    return torch.ops.invfast.warp_normalize(
        x, matrices, mean_t, std_t, mode, padding_mode, align_corners, fills, list(size), out_dtype
    )
