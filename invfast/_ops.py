"""Loads the compiled kernels and registers their fake kernels and autograd.

The schemas live in ``csrc/ops.cpp``; the CPU and CUDA kernels in ``csrc/``.
This module adds what the dispatcher needs from Python: a fake (meta) kernel
for every op, so that ``torch.compile`` and ``opcheck`` can trace it, and the
autograd formulas. It also decides, per call, whether a kernel or the
plain-PyTorch reference runs.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch._prims_common import suggest_memory_format

try:
    from invfast import _C as _ext

    _EXT_ERROR = None
except ImportError as exc:  # the package runs on the reference alone
    _ext = None
    _EXT_ERROR = f"{type(exc).__name__}: {exc}"

_BACKEND = os.environ.get("INVFAST_BACKEND", "auto").lower()
if _BACKEND not in ("auto", "reference"):
    warnings.warn(
        f"invfast: INVFAST_BACKEND must be 'auto' or 'reference', got {_BACKEND!r}; using 'auto'",
        stacklevel=1,
    )
    _BACKEND = "auto"

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def set_backend(name: str) -> None:
    """Chooses ``"auto"`` (kernels where they exist) or ``"reference"`` for every op."""
    global _BACKEND
    if name not in ("auto", "reference"):
        raise ValueError(f"backend must be 'auto' or 'reference', got {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded extension registered ``invfast::op`` for a device type."""
    if _ext is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"invfast::{op}", key)


def use_kernel(op: str, device: torch.device, unsupported: str | None = None) -> bool:
    """Whether ``op`` runs its compiled kernel; warns once when it falls back.

    Args:
        op: the op's name in the ``invfast`` namespace.
        device: where the inputs are.
        unsupported: why these inputs are outside what the kernel handles, if they are.
    """
    if _BACKEND == "reference":
        return False
    if _ext is None:
        warn_once(
            "extension",
            f"invfast: the compiled kernels did not load ({_EXT_ERROR}); "
            "every op runs its plain-PyTorch reference",
        )
        return False
    if not has_kernel(op, device.type):
        warn_once(
            f"{op}:{device.type}",
            f"invfast: {op} has no {device.type} kernel in this build; using the reference",
        )
        return False
    if unsupported is not None:
        warn_once(f"{op}:{unsupported}", f"invfast: {op}: {unsupported}; using the reference")
        return False
    return True


def backend_info() -> dict:
    """What was loaded: versions, kernels present, and the backend in force.

    Returns:
        dict with ``version``, ``backend`` ("auto" or "reference"),
        ``extension_loaded``, ``extension_error``, ``built_for_torch``,
        ``built_for_cuda``, ``running_torch``, ``cpu_kernels``, ``cuda_kernels``
        and ``cuda_available``.
    """
    from invfast import __version__

    return {
        "version": __version__,
        "backend": _BACKEND,
        "extension_loaded": _ext is not None,
        "extension_error": _EXT_ERROR,
        "built_for_torch": getattr(_ext, "torch_version", None),
        "built_for_cuda": getattr(_ext, "cuda_version", None),
        "running_torch": torch.__version__,
        "cpu_kernels": has_kernel("affine_warp", "cpu"),
        "cuda_kernels": has_kernel("affine_warp", "cuda"),
        "cuda_available": torch.cuda.is_available(),
    }


# ---------------------------------------------------------------------------
# Fake kernels and autograd of the warp.

if _ext is not None:

    @torch.library.register_fake("invfast::affine_warp")
    def _affine_warp_fake(images, matrices, interpolation, padding, align_corners, fill, size):
        torch._check(images.dim() == 4, lambda: "affine_warp: images must be (B, C, H, W)")
        torch._check(
            matrices.dim() == 3 and matrices.shape[0] == images.shape[0],
            lambda: "affine_warp: matrices must be (B, 2, 3) or (B, 3, 3)",
        )
        shape = (images.shape[0], images.shape[1], size[0], size[1])
        return images.new_empty(shape).contiguous(memory_format=suggest_memory_format(images))

    @torch.library.register_fake("invfast::affine_warp_out")
    def _affine_warp_out_fake(images, matrices, interpolation, padding, align_corners, fill, out):
        return None

    @torch.library.register_fake("invfast::affine_warp_backward")
    def _affine_warp_backward_fake(
        grad_out, matrices, interpolation, padding, align_corners, input_size
    ):
        shape = (grad_out.shape[0], grad_out.shape[1], input_size[0], input_size[1])
        return grad_out.new_empty(shape)

    def _affine_warp_setup(ctx, inputs, output):
        images, matrices, interpolation, padding, align_corners, _, _ = inputs
        ctx.save_for_backward(matrices)
        ctx.options = (interpolation, padding, align_corners)
        ctx.input_size = (images.shape[2], images.shape[3])

    def _affine_warp_backward(ctx, grad):
        (matrices,) = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            raise RuntimeError(
                "invfast::affine_warp: the kernel has no gradient with respect to matrices; "
                "call invfast.affine_warp, which uses the reference for that"
            )
        grad_images = None
        if ctx.needs_input_grad[0]:
            grad_images = torch.ops.invfast.affine_warp_backward(
                grad, matrices, *ctx.options, ctx.input_size
            )
        return grad_images, None, None, None, None, None, None

    torch.library.register_autograd(
        "invfast::affine_warp", _affine_warp_backward, setup_context=_affine_warp_setup
    )
