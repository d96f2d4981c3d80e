"""Consistency losses for invariance training, each one fused kernel.

Every function takes logits ``(N, C)`` or dense logits ``(N, C, d1, ...)``
(classes in dim 1, as PyTorch's losses), in float32, float64, float16 or
bfloat16. A dense input is ``N * d1 * ...`` rows of ``C`` classes. The
softmax is taken with an online, max-shifted log-sum-exp in float32 (float64
for float64 inputs), so large logits, ``-inf`` logits (masked classes),
one-hot teachers and float16 inputs stay finite. The loss is float32
(float64 for float64 inputs); gradients have the inputs' dtype.

Reductions, over rows ``r`` with per-row loss ``l_r`` and mask ``m_r``:

- ``"none"``: ``m_r * l_r`` in the rows' shape ``(N,)`` or ``(N, d1, ...)``;
- ``"sum"``: ``sum_r m_r l_r``;
- ``"batchmean"``: the sum divided by ``N`` (the first dimension), as
  ``kl_div(reduction="batchmean")``;
- ``"mean"``: the sum divided by the number of rows ``N * d1 * ...``.

For ``(N, C)`` inputs ``"mean"`` and ``"batchmean"`` agree. Masked-out rows
still count in the divisor (UDA and FixMatch average over the whole batch);
with no rows at all the means are 0, not NaN.

No function reads a value back to the host: the kernels write the loss and,
in the same pass, the gradient that backward scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _ops
from .reference import losses as _ref

_REDUCTIONS = ("none", "sum", "mean", "batchmean")
_NORMALIZE = ("all", "kept")
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_VIEWS = 16  # kMaxViews in csrc/losses/losses_math.h

__all__ = [
    "fixmatch_loss",
    "js_consistency",
    "kl_consistency",
    "mse_consistency",
    "symmetric_kl",
]


def _check_logits(op: str, name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{op}: {name} must be logits (N, C) or (N, C, d1, ...), got shape {tuple(x.shape)}"
        )
    if x.shape[1] < 1:
        raise ValueError(f"{op}: {name} must have at least one class, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float64, float16 or bfloat16, got {x.dtype}"
        )


def _check_alike(op: str, name_a: str, a, name_b: str, b) -> None:
    _check_logits(op, name_a, a)
    _check_logits(op, name_b, b)
    if a.shape != b.shape:
        raise ValueError(
            f"{op}: {name_b} must have the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}"
        )
    if a.dtype != b.dtype:
        raise TypeError(
            f"{op}: {name_b} must have the dtype of {name_a} ({a.dtype}), got {b.dtype}"
        )
    if a.device != b.device:
        raise ValueError(
            f"{op}: {name_b} must be on the device of {name_a} ({a.device}), got {b.device}"
        )


def _check_choice(op: str, name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        options = ", ".join(map(repr, choices))
        raise ValueError(f"{op}: {name} must be one of {options}, got {value!r}")


def _check_temperature(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{op}: {name} must be a positive number, got {value!r}")
    if value == float("inf"):
        raise ValueError(f"{op}: {name} must be finite, got {value!r}")
    return float(value)


def _check_mask(op: str, mask, x: torch.Tensor):
    """The mask in the rows' shape (N, d1, ...); a (N,) mask of dense logits is expanded."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{op}: mask must be a Tensor or None, got {type(mask).__name__}")
    rows = (x.shape[0], *x.shape[2:])
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{op}: mask must be bool or floating point, got {mask.dtype}")
    if mask.device != x.device:
        raise ValueError(f"{op}: mask must be on {x.device}, got {mask.device}")
    if tuple(mask.shape) == rows:
        return mask
    if x.dim() > 2 and tuple(mask.shape) == (x.shape[0],):
        return mask.view(-1, *([1] * (x.dim() - 2))).expand(rows)
    expected = f"{rows}" if x.dim() == 2 else f"{rows} or ({x.shape[0]},)"
    raise ValueError(f"{op}: mask must have shape {expected}, got {tuple(mask.shape)}")


def _wants_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def kl_consistency(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    temperature: float = 1.0,
    teacher_temperature: float | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
    detach_teacher: bool = True,
) -> torch.Tensor:
    """KL(softmax(teacher / T_t) || softmax(student / T)), summed over classes.

    UDA's consistency term is ``kl_consistency(student, teacher,
    teacher_temperature=0.4, mask=confidence >= 0.8)``.

    Args:
        student (Tensor[N, C] or Tensor[N, C, d1, ...]): the student's logits.
        teacher (Tensor, shape, dtype and device of student): the teacher's logits.
        temperature (float): T, divides the student's logits. Default: ``1.0``.
        teacher_temperature (float, optional): T_t, divides the teacher's
            logits (UDA sharpens with 0.4). Default: ``temperature``.
        mask (Tensor[N] or Tensor[N, d1, ...], optional): a bool or float
            weight per row; rows of weight 0 are skipped (their loss and
            gradient are 0 even if their logits are not finite). Receives no
            gradient.
        reduction (str): ``"none"``, ``"sum"``, ``"mean"`` or ``"batchmean"``
            (see the module). Default: ``"batchmean"``.
        detach_teacher (bool): when True the teacher gets no gradient, as
            with ``teacher.detach()``. Default: ``True``.

    Returns:
        Tensor: 0-dim, or the rows' shape for ``"none"``; float32 (float64
        for float64 inputs). NOTE: a class the student gives no mass (a -inf
        logit) where the teacher gives some makes the KL infinite, as it is.
    """
    op = "kl_consistency"
    _check_alike(op, "student", student, "teacher", teacher)
    t = _check_temperature(op, "temperature", temperature)
    tt = t if teacher_temperature is None else teacher_temperature
    tt = _check_temperature(op, "teacher_temperature", tt)
    mask = _check_mask(op, mask, student)
    _check_choice(op, "reduction", reduction, _REDUCTIONS)
    if detach_teacher:
        teacher = teacher.detach()

    if not _ops.use_kernel(op, student.device):
        return _ref.kl_consistency(
            student,
            teacher,
            temperature=t,
            teacher_temperature=tt,
            mask=mask,
            reduction=reduction,
            detach_teacher=detach_teacher,
        )
    loss, _, _ = torch.ops.invfast.kl_consistency(
        student, teacher, t, tt, mask, reduction, _wants_grad(student), _wants_grad(teacher)
    )
    return loss


def symmetric_kl(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """R-Drop's symmetric KL: ``(KL(p_a || p_b) + KL(p_b || p_a)) / 2``.

    NOTE: this is the *mean* of the two directions, as R-Drop computes it
    (half of Jeffreys' divergence); multiply by 2 for their sum. Both inputs
    get gradients; the loss is symmetric in ``a`` and ``b``.

    Args:
        a (Tensor[N, C] or Tensor[N, C, d1, ...]): logits of the first pass.
        b (Tensor, shape, dtype and device of a): logits of the second pass.
        temperature (float): divides both. Default: ``1.0``.
        mask (Tensor[N] or Tensor[N, d1, ...], optional): per-row weight, as
            in :func:`kl_consistency`.
        reduction (str): as in :func:`kl_consistency`. Default: ``"batchmean"``.

    Returns:
        Tensor: as in :func:`kl_consistency`.
    """
    op = "symmetric_kl"
    _check_alike(op, "a", a, "b", b)
    t = _check_temperature(op, "temperature", temperature)
    mask = _check_mask(op, mask, a)
    _check_choice(op, "reduction", reduction, _REDUCTIONS)

    if not _ops.use_kernel(op, a.device):
        return _ref.symmetric_kl(a, b, temperature=t, mask=mask, reduction=reduction)
    loss, _, _ = torch.ops.invfast.symmetric_kl(
        a, b, t, mask, reduction, _wants_grad(a), _wants_grad(b)
    )
    return loss


def mse_consistency(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
    detach_teacher: bool = True,
) -> torch.Tensor:
    """Squared distance of the two softmaxes, ``sum_c (q_c - p_c)^2`` per row.

    The Pi-model's and Mean Teacher's consistency cost (they divide by C as
    well; multiply by ``1 / C`` for theirs).

    Args:
        student (Tensor[N, C] or Tensor[N, C, d1, ...]): the student's logits.
        teacher (Tensor, shape, dtype and device of student): the teacher's logits.
        temperature (float): divides both. Default: ``1.0``.
        mask (Tensor[N] or Tensor[N, d1, ...], optional): per-row weight, as
            in :func:`kl_consistency`.
        reduction (str): as in :func:`kl_consistency`. Default: ``"batchmean"``.
        detach_teacher (bool): when True the teacher gets no gradient. Default: ``True``.

    Returns:
        Tensor: as in :func:`kl_consistency`.
    """
    op = "mse_consistency"
    _check_alike(op, "student", student, "teacher", teacher)
    t = _check_temperature(op, "temperature", temperature)
    mask = _check_mask(op, mask, student)
    _check_choice(op, "reduction", reduction, _REDUCTIONS)
    if detach_teacher:
        teacher = teacher.detach()

    if not _ops.use_kernel(op, student.device):
        return _ref.mse_consistency(
            student,
            teacher,
            temperature=t,
            mask=mask,
            reduction=reduction,
            detach_teacher=detach_teacher,
        )
    loss, _, _ = torch.ops.invfast.mse_consistency(
        student, teacher, t, mask, reduction, _wants_grad(student), _wants_grad(teacher)
    )
    return loss


def js_consistency(
    *logits: torch.Tensor,
    weights: Sequence[float] | None = None,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Jensen-Shannon divergence of K >= 2 views, ``sum_k w_k KL(p_k || M)``.

    ``M = sum_k w_k p_k``; with the default equal weights this is AugMix's
    consistency term ``mean_k KL(p_k || M)`` (AugMix multiplies by 12 and
    clamps M at 1e-7; this computes the unclamped value). All views get
    gradients, from one kernel that reads them in place (no stacking copy).

    Args:
        *logits (Tensor[N, C] or Tensor[N, C, d1, ...]): K >= 2 views of one
            shape, dtype and device. The kernels take up to 16; more run the
            reference.
        weights (sequence of float, optional): K positive weights, normalised
            to sum to 1. Default: equal.
        temperature (float): divides every view. Default: ``1.0``.
        reduction (str): as in :func:`kl_consistency`. Default: ``"batchmean"``.

    Returns:
        Tensor: as in :func:`kl_consistency`.
    """
    op = "js_consistency"
    if len(logits) == 1 and isinstance(logits[0], (list, tuple)):
        logits = tuple(logits[0])
    if len(logits) < 2:
        raise ValueError(f"{op}: logits must be at least 2 views, got {len(logits)}")
    for k in range(1, len(logits)):
        _check_alike(op, "logits[0]", logits[0], f"logits[{k}]", logits[k])
    t = _check_temperature(op, "temperature", temperature)
    _check_choice(op, "reduction", reduction, _REDUCTIONS)
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(logits):
            raise ValueError(
                f"{op}: weights must have one value per view ({len(logits)}), got {len(weights)}"
            )
        if not all(w > 0 and w != float("inf") for w in weights):
            raise ValueError(f"{op}: weights must be positive and finite, got {weights}")
        total = sum(weights)
        weights = [w / total for w in weights]

    unsupported = None
    if len(logits) > _MAX_VIEWS:
        unsupported = f"the kernels take at most {_MAX_VIEWS} views, got {len(logits)}"
    if not _ops.use_kernel(op, logits[0].device, unsupported):
        return _ref.js_consistency(*logits, weights=weights, temperature=t, reduction=reduction)
    compute_grad = any(_wants_grad(x) for x in logits)
    loss, _ = torch.ops.invfast.js_consistency(list(logits), weights, t, reduction, compute_grad)
    return loss


def fixmatch_loss(
    weak: torch.Tensor,
    strong: torch.Tensor,
    *,
    threshold: float = 0.95,
    temperature: float = 1.0,
    normalize: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch: cross-entropy of the strong view against the weak view's argmax.

    Only rows whose weak top probability ``max softmax(weak / temperature)``
    is at least ``threshold`` count. The weak view is detached. Nothing is
    read back to the host: no ``.item()``, no branch on a value.

    Args:
        weak (Tensor[N, C] or Tensor[N, C, d1, ...]): logits of the weak view.
        strong (Tensor, shape, dtype and device of weak): logits of the strong view.
        threshold (float): confidence in [0, 1] a row needs. Default: ``0.95``.
        temperature (float): divides the weak logits before the confidence is
            taken (the pseudo-label does not depend on it; the strong view's
            cross-entropy is at temperature 1). Default: ``1.0``.
        normalize (str): ``"all"`` divides the kept rows' sum by the number of
            rows, as FixMatch does; ``"kept"`` by the number of kept rows (the
            loss is 0, not NaN, when none is kept). Default: ``"all"``.

    Returns:
        (Tensor, Tensor): the loss and the fraction of rows kept, both 0-dim
        float32 (float64 for float64 inputs).
    """
    op = "fixmatch_loss"
    _check_alike(op, "weak", weak, "strong", strong)
    t = _check_temperature(op, "temperature", temperature)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"{op}: threshold must be a float, got {type(threshold).__name__}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{op}: threshold must be in [0, 1], got {threshold!r}")
    _check_choice(op, "normalize", normalize, _NORMALIZE)
    weak = weak.detach()

    if not _ops.use_kernel(op, weak.device):
        return _ref.fixmatch_loss(
            weak, strong, threshold=float(threshold), temperature=t, normalize=normalize
        )
    loss, kept, _ = torch.ops.invfast.fixmatch_loss(
        weak, strong, float(threshold), t, normalize, _wants_grad(strong)
    )
    return loss, kept
