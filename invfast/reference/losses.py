"""The consistency losses written with ordinary PyTorch calls.

Same arguments and results as :mod:`invfast.losses` (masks already in the
rows' shape). Written for clarity: every softmax is materialised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _log_softmax(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(x.to(_acc(x)) / temperature, dim=1)


def _kl_rows(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """sum_c p_c (lp_c - lq_c) over dim 1, with 0 where p_c is 0."""
    p = lp.exp()
    # NOTE: where p is 0, lp may be -inf and lp - lq NaN; the term is 0.
    d = torch.where(p > 0, lp - lq, torch.zeros_like(lp))
    return (p * d).sum(1)


def _reduce(rows: torch.Tensor, reduction: str, mask: torch.Tensor | None, n: int) -> torch.Tensor:
    if mask is not None:
        m = mask.to(rows.dtype)
        rows = torch.where(m != 0, rows * m, torch.zeros_like(rows))
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "batchmean":
        return total / max(n, 1)
    if reduction == "mean":
        return total / max(rows.numel(), 1)
    return total


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
    """Reference of :func:`invfast.losses.kl_consistency`."""
    tt = temperature if teacher_temperature is None else teacher_temperature
    if detach_teacher:
        teacher = teacher.detach()
    lq = _log_softmax(student, temperature)
    lp = _log_softmax(teacher, tt)
    return _reduce(_kl_rows(lp, lq), reduction, mask, student.shape[0])


def symmetric_kl(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Reference of :func:`invfast.losses.symmetric_kl` (the mean of both directions)."""
    la = _log_softmax(a, temperature)
    lb = _log_softmax(b, temperature)
    rows = 0.5 * (_kl_rows(la, lb) + _kl_rows(lb, la))
    return _reduce(rows, reduction, mask, a.shape[0])


def mse_consistency(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
    detach_teacher: bool = True,
) -> torch.Tensor:
    """Reference of :func:`invfast.losses.mse_consistency`."""
    if detach_teacher:
        teacher = teacher.detach()
    q = _log_softmax(student, temperature).exp()
    p = _log_softmax(teacher, temperature).exp()
    return _reduce(((q - p) ** 2).sum(1), reduction, mask, student.shape[0])


def js_consistency(
    *logits: torch.Tensor,
    weights: Sequence[float] | None = None,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Reference of :func:`invfast.losses.js_consistency`."""
    k = len(logits)
    w = [1.0 / k] * k if weights is None else [float(v) / sum(weights) for v in weights]
    lps = [_log_softmax(x, temperature) for x in logits]
    mixture = sum(wk * lp.exp() for wk, lp in zip(w, lps))
    # NOTE: where M is 0 every p_k is 0 and log M is not used; taking log(1)
    # there keeps log's gradient (1 / M) from making NaN.
    log_m = torch.where(mixture > 0, mixture, torch.ones_like(mixture)).log()
    rows = sum(wk * _kl_rows(lp, log_m) for wk, lp in zip(w, lps))
    return _reduce(rows, reduction, None, logits[0].shape[0])


def fixmatch_loss(
    weak: torch.Tensor,
    strong: torch.Tensor,
    *,
    threshold: float = 0.95,
    temperature: float = 1.0,
    normalize: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`invfast.losses.fixmatch_loss`."""
    with torch.no_grad():
        probs = _log_softmax(weak, temperature).exp()
        confidence, label = probs.max(1)
        kept = confidence >= threshold
    ce = F.cross_entropy(strong.to(_acc(strong)), label, reduction="none")
    rows = torch.where(kept, ce, torch.zeros_like(ce))
    count = kept.sum().to(rows.dtype)
    n_rows = max(rows.numel(), 1)
    if normalize == "kept":
        loss = rows.sum() / count.clamp(min=1)
    else:
        loss = rows.sum() / n_rows
    return loss, count / n_rows
