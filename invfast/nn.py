"""The consistency losses as modules, for a training loop's loss list.

Each module holds its options and calls the function of the same meaning in
:mod:`invfast.losses`; see there for the reductions and numerics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import losses

__all__ = ["FixMatchLoss", "JSConsistency", "KLConsistency", "MSEConsistency", "SymmetricKL"]


class KLConsistency(nn.Module):
    """KL(softmax(teacher / T_t) || softmax(student / T)).

    See :func:`invfast.losses.kl_consistency`.

    Args:
        temperature (float): T. Default: ``1.0``.
        teacher_temperature (float, optional): T_t. Default: ``temperature``.
        reduction (str): ``"none"``, ``"sum"``, ``"mean"`` or ``"batchmean"``.
            Default: ``"batchmean"``.
        detach_teacher (bool): the teacher gets no gradient. Default: ``True``.

    Shape:
        - student, teacher: ``(N, C)`` or ``(N, C, d1, ...)``.
        - mask (optional): ``(N,)`` or ``(N, d1, ...)``.
        - output: ``()``, or ``(N, d1, ...)`` for ``"none"``.

    Example::

        >>> import torch, invfast
        >>> uda = invfast.nn.KLConsistency(teacher_temperature=0.4)
        >>> student, teacher = torch.randn(8, 10), torch.randn(8, 10)
        >>> uda(student, teacher, mask=teacher.softmax(1).amax(1) >= 0.5).shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 1.0,
        teacher_temperature: float | None = None,
        reduction: str = "batchmean",
        detach_teacher: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.teacher_temperature = teacher_temperature
        self.reduction = reduction
        self.detach_teacher = detach_teacher

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return losses.kl_consistency(
            student,
            teacher,
            temperature=self.temperature,
            teacher_temperature=self.teacher_temperature,
            mask=mask,
            reduction=self.reduction,
            detach_teacher=self.detach_teacher,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, teacher_temperature={self.teacher_temperature}, "
            f"reduction={self.reduction!r}, detach_teacher={self.detach_teacher}"
        )


class SymmetricKL(nn.Module):
    """R-Drop's ``(KL(p_a || p_b) + KL(p_b || p_a)) / 2``; see :func:`invfast.losses.symmetric_kl`.

    Args:
        temperature (float): divides both inputs. Default: ``1.0``.
        reduction (str): as in :class:`KLConsistency`. Default: ``"batchmean"``.

    Shape:
        - a, b: ``(N, C)`` or ``(N, C, d1, ...)``; mask (optional) as in :class:`KLConsistency`.
        - output: ``()``, or ``(N, d1, ...)`` for ``"none"``.

    Example::

        >>> import torch, invfast
        >>> a, b = torch.randn(4, 5), torch.randn(4, 5)
        >>> bool(invfast.nn.SymmetricKL()(a, b) >= 0)
        True
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return losses.symmetric_kl(
            a, b, temperature=self.temperature, mask=mask, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


class JSConsistency(nn.Module):
    """Jensen-Shannon divergence of K >= 2 views; see :func:`invfast.losses.js_consistency`.

    Args:
        weights (sequence of float, optional): one positive weight per view.
            Default: equal.
        temperature (float): divides every view. Default: ``1.0``.
        reduction (str): as in :class:`KLConsistency`. Default: ``"batchmean"``.

    Shape:
        - each view: ``(N, C)`` or ``(N, C, d1, ...)``.
        - output: ``()``, or ``(N, d1, ...)`` for ``"none"``.

    Example::

        >>> import torch, invfast
        >>> clean, aug1, aug2 = torch.randn(3, 4, 10).unbind(0)
        >>> augmix = 12 * invfast.nn.JSConsistency()(clean, aug1, aug2)
        >>> augmix.shape
        torch.Size([])
    """

    def __init__(
        self,
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.weights = None if weights is None else [float(w) for w in weights]
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, *logits: torch.Tensor) -> torch.Tensor:
        return losses.js_consistency(
            *logits, weights=self.weights, temperature=self.temperature, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return (
            f"weights={self.weights}, temperature={self.temperature}, reduction={self.reduction!r}"
        )


class MSEConsistency(nn.Module):
    """``sum_c (q_c - p_c)^2`` of the two softmaxes; see :func:`invfast.losses.mse_consistency`.

    Args:
        temperature (float): divides both inputs. Default: ``1.0``.
        reduction (str): as in :class:`KLConsistency`. Default: ``"batchmean"``.
        detach_teacher (bool): the teacher gets no gradient. Default: ``True``.

    Shape:
        - student, teacher: ``(N, C)`` or ``(N, C, d1, ...)``; mask as in :class:`KLConsistency`.
        - output: ``()``, or ``(N, d1, ...)`` for ``"none"``.

    Example::

        >>> import torch, invfast
        >>> x = torch.randn(4, 5)
        >>> float(invfast.nn.MSEConsistency()(x, x))
        0.0
    """

    def __init__(
        self, temperature: float = 1.0, reduction: str = "batchmean", detach_teacher: bool = True
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction
        self.detach_teacher = detach_teacher

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return losses.mse_consistency(
            student,
            teacher,
            temperature=self.temperature,
            mask=mask,
            reduction=self.reduction,
            detach_teacher=self.detach_teacher,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"detach_teacher={self.detach_teacher}"
        )


class FixMatchLoss(nn.Module):
    """FixMatch's thresholded pseudo-label cross-entropy; see :func:`invfast.losses.fixmatch_loss`.

    Args:
        threshold (float): confidence in [0, 1] a row needs. Default: ``0.95``.
        temperature (float): divides the weak logits for the confidence. Default: ``1.0``.
        normalize (str): ``"all"`` or ``"kept"``. Default: ``"all"``.

    Shape:
        - weak, strong: ``(N, C)`` or ``(N, C, d1, ...)``.
        - output: ``(loss, kept_fraction)``, both ``()``.

    Example::

        >>> import torch, invfast
        >>> weak, strong = 10 * torch.randn(8, 10), torch.randn(8, 10)
        >>> loss, kept = invfast.nn.FixMatchLoss(threshold=0.9)(weak, strong)
        >>> loss.shape, kept.shape
        (torch.Size([]), torch.Size([]))
    """

    def __init__(
        self, threshold: float = 0.95, temperature: float = 1.0, normalize: str = "all"
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.temperature = temperature
        self.normalize = normalize

    def forward(
        self, weak: torch.Tensor, strong: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return losses.fixmatch_loss(
            weak,
            strong,
            threshold=self.threshold,
            temperature=self.temperature,
            normalize=self.normalize,
        )

    def extra_repr(self) -> str:
        return (
            f"threshold={self.threshold}, temperature={self.temperature}, "
            f"normalize={self.normalize!r}"
        )
