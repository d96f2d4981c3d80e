"""Loads the compiled kernels and registers their fake kernels and autograd.

The schemas live in ``csrc/ops.cpp``; the CPU and CUDA kernels in ``csrc/``.
This module adds what the dispatcher needs from Python: a fake (meta) kernel
for every op, so that ``torch.compile`` and ``opcheck`` can trace it, and the
warp's autograd formula (the losses' are in C++). It also decides, per call,
whether a kernel or the plain-PyTorch reference runs.
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


# NOTE: torch.compile evaluates this once while tracing and keeps the answer as a
# constant (the registrations do not change after import); calling the dispatcher
# query from a traced function would otherwise break the graph.
@torch.compiler.assume_constant_result
def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded extension registered ``invfast::op`` for a device type."""
    found = _has_kernel.get((op, device_type))
    if found is None:
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
        found = (
            _ext is not None
            and key is not None
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"invfast::{op}", key)
        )
        _has_kernel[(op, device_type)] = found
    return found


# has_kernel's answers: the dispatcher query costs microseconds on every call.
_has_kernel: dict[tuple[str, str], bool] = {}


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
        ``built_for_cuda``, ``running_torch``, ``cpu_kernels``, ``cuda_kernels``,
        ``cpu_loss_kernels`` (the instruction set of the CPU loss kernels:
        ``"avx512"``, ``"avx2"`` or ``"generic"``; ``ATEN_CPU_CAPABILITY=avx2`` or
        ``default`` caps it, as it does ATen's) and ``cuda_available``.
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
        "cpu_loss_kernels": getattr(_ext, "cpu_loss_kernels", None),
        "cuda_available": torch.cuda.is_available(),
    }


# ---------------------------------------------------------------------------
# Fake kernels and autograd of the warp.

if _ext is not None:

    def _warp_output_shape(images, matrices, size):
        torch._check(images.dim() == 4, lambda: "affine_warp: images must be (B, C, H, W)")
        torch._check(
            matrices.dim() in (3, 4) and matrices.shape[-3] == images.shape[0],
            lambda: "affine_warp: matrices must be (B, 2|3, 3) or (K, B, 2|3, 3)",
        )
        shape = (images.shape[0], images.shape[1], size[0], size[1])
        return shape if matrices.dim() == 3 else (matrices.shape[0], *shape)

    def _warp_empty(images, matrices, size, dtype, keep_format=True):
        # Each view in the images' memory format (or NCHW), as the kernels allocate it.
        shape = _warp_output_shape(images, matrices, size)
        views = 1 if matrices.dim() == 3 else shape[0]
        flat = images.new_empty((views * images.shape[0], *shape[-3:]), dtype=dtype)
        if keep_format:
            flat = flat.contiguous(memory_format=suggest_memory_format(images))
        return flat if matrices.dim() == 3 else flat.view(shape)

    @torch.library.register_fake("invfast::affine_warp")
    def _affine_warp_fake(
        images, matrices, interpolation, padding, align_corners, fill, size, out_dtype=None
    ):
        dtype = images.dtype if out_dtype is None else out_dtype
        return _warp_empty(images, matrices, size, dtype)

    @torch.library.register_fake("invfast::affine_warp_out")
    def _affine_warp_out_fake(images, matrices, interpolation, padding, align_corners, fill, out):
        return None

    @torch.library.register_fake("invfast::warp_normalize")
    def _warp_normalize_fake(
        images, matrices, mean, std, interpolation, padding, align_corners, fill, size, out_dtype
    ):
        torch._check(images.dtype == torch.uint8, lambda: "warp_normalize: images must be uint8")
        return _warp_empty(images, matrices, size, out_dtype, keep_format=False)

    @torch.library.register_fake("invfast::warp_normalize_out")
    def _warp_normalize_out_fake(
        images, matrices, mean, std, interpolation, padding, align_corners, fill, out
    ):
        return None

    @torch.library.register_fake("invfast::affine_warp_backward")
    def _affine_warp_backward_fake(
        grad_out,
        images,
        matrices,
        interpolation,
        padding,
        align_corners,
        fill,
        input_size,
        images_grad,
    ):
        B, C = grad_out.shape[-4], grad_out.shape[-3]
        if images_grad:
            grad_images = grad_out.new_empty((B, C, input_size[0], input_size[1]))
        else:
            grad_images = grad_out.new_empty((0,))
        if images is not None:
            grad_matrices = matrices.new_empty(matrices.shape)
        else:
            grad_matrices = matrices.new_empty((0,))
        return grad_images, grad_matrices

    def _affine_warp_setup(ctx, inputs, output):
        images, matrices, interpolation, padding, align_corners, fill, _, _ = inputs
        # The image is kept only when the matrix gradient needs to read it.
        ctx.save_for_backward(matrices, images if matrices.requires_grad else None)
        ctx.options = (interpolation, padding, align_corners, fill)
        ctx.input_size = (images.shape[2], images.shape[3])
        ctx.images_dtype = images.dtype

    def _affine_warp_backward(ctx, grad):
        matrices, images = ctx.saved_tensors
        want_images, want_matrices = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_images or want_matrices):
            return None, None, None, None, None, None, None, None
        grad_images, grad_matrices = torch.ops.invfast.affine_warp_backward(
            grad.to(torch.float64 if ctx.images_dtype == torch.float64 else grad.dtype),
            images if want_matrices else None,
            matrices,
            *ctx.options,
            ctx.input_size,
            want_images,
        )
        grad_images = grad_images.to(ctx.images_dtype) if want_images else None
        return (
            grad_images,
            grad_matrices if want_matrices else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )

    torch.library.register_autograd(
        "invfast::affine_warp", _affine_warp_backward, setup_context=_affine_warp_setup
    )


# ---------------------------------------------------------------------------
# Fake kernels of the consistency losses.
#
# Each loss op returns, next to the loss, d(loss)/d(input) for every input
# whose gradient was asked for (computed in the forward pass, already
# multiplied by the mask and the reduction's 1/N), or an empty tensor. Their
# autograd formulas, which scale those buffers by the upstream gradient, are
# registered in C++ (csrc/losses/losses_autograd.cpp): on CPU-sized batches
# the Python autograd plumbing cost as much as the kernels.

if _ext is not None:

    def _loss_dtype(x):
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def _rows_shape(x):
        return (x.shape[0], *x.shape[2:])

    def _fake_loss(x, reduction):
        shape = _rows_shape(x) if reduction == "none" else ()
        return x.new_empty(shape, dtype=_loss_dtype(x))

    def _fake_grad(x, wanted):
        if not wanted:
            return x.new_empty((0,))
        if x.dim() == 2:
            return x.new_empty(x.shape)
        # The kernels write class-last rows; the gradient is a view of them.
        return x.new_empty((*_rows_shape(x), x.shape[1])).movedim(-1, 1)

    def _check_fake_logits(op, x):
        torch._check(x.dim() >= 2, lambda: f"{op}: logits must be (N, C) or (N, C, d1, ...)")

    @torch.library.register_fake("invfast::kl_consistency")
    def _kl_consistency_fake(
        student, teacher, temperature, teacher_temperature, mask, reduction, grad_s, grad_t
    ):
        _check_fake_logits("kl_consistency", student)
        return (
            _fake_loss(student, reduction),
            _fake_grad(student, grad_s),
            _fake_grad(student, grad_t),
        )

    @torch.library.register_fake("invfast::symmetric_kl")
    def _symmetric_kl_fake(a, b, temperature, mask, reduction, grad_a, grad_b):
        _check_fake_logits("symmetric_kl", a)
        return _fake_loss(a, reduction), _fake_grad(a, grad_a), _fake_grad(a, grad_b)

    @torch.library.register_fake("invfast::mse_consistency")
    def _mse_consistency_fake(student, teacher, temperature, mask, reduction, grad_s, grad_t):
        _check_fake_logits("mse_consistency", student)
        return (
            _fake_loss(student, reduction),
            _fake_grad(student, grad_s),
            _fake_grad(student, grad_t),
        )

    @torch.library.register_fake("invfast::js_consistency")
    def _js_consistency_fake(logits, weights, temperature, reduction, compute_grad):
        _check_fake_logits("js_consistency", logits[0])
        grads = [_fake_grad(x, True) for x in logits] if compute_grad else []
        return _fake_loss(logits[0], reduction), grads

    @torch.library.register_fake("invfast::fixmatch_loss")
    def _fixmatch_loss_fake(weak, strong, threshold, temperature, normalize, compute_grad):
        _check_fake_logits("fixmatch_loss", weak)
        dtype = _loss_dtype(weak)
        return (
            weak.new_empty((), dtype=dtype),
            weak.new_empty((), dtype=dtype),
            _fake_grad(weak, compute_grad),
        )


# ---------------------------------------------------------------------------
# Fake kernels of RandomAffine's parameter sampling.

if _ext is not None:

    @torch.library.register_fake("invfast::counter_uniform")
    def _counter_uniform_fake(sample_ids, seed, step, n):
        torch._check(sample_ids.dim() == 1, lambda: "counter_uniform: sample_ids must be (B,)")
        torch._check(n >= 0, lambda: "counter_uniform: n must be non-negative")
        return sample_ids.new_empty((sample_ids.shape[0], n), dtype=torch.float64)

    @torch.library.register_fake("invfast::random_affine_matrices")
    def _random_affine_matrices_fake(uniforms, params, angles, crop, sizes):
        torch._check(
            uniforms.dim() == 2 and uniforms.shape[1] == 14,
            lambda: "random_affine_matrices: uniforms must be (B, 14)",
        )
        return uniforms.new_empty((uniforms.shape[0], 2, 3), dtype=torch.float32)
