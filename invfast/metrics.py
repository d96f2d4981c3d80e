"""How much a model's answers change under fixed geometric transforms.

:func:`invariance_sweep` warps a labelled evaluation set by one fixed
transform at a time (rotate by 15 degrees, shift by a tenth of the width,
zoom by 1.2, ...) with :func:`invfast.affine_warp` and reports, per
transform, the accuracy on the warped images and the mean KL divergence
between the model's predictions on the original and the warped images.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import functional, geometry

KINDS = ("rotation", "translation", "scale", "shear", "hflip")

DEFAULT_VALUES = {
    "rotation": (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0),
    "translation": (-0.2, -0.1, 0.0, 0.1, 0.2),
    "scale": (0.7, 0.85, 1.0, 1.15, 1.3),
    "shear": (-20.0, -10.0, 0.0, 10.0, 20.0),
    "hflip": (False, True),
}


@dataclass(frozen=True)
class SweepPoint:
    """The result of one fixed transform.

    Attributes:
        kind (str): the kind of transform, one of :data:`KINDS`.
        value: the transform's parameter, as given (degrees, fraction, factor, bool).
        accuracy (float): fraction of warped images whose arg-max class is the label.
        kl (float): mean over images of ``KL(p_orig || p_warped)`` in nats, where
            ``p`` is the model's softmax.
        count (int): number of images evaluated.
    """

    kind: str
    value: object
    accuracy: float
    kl: float
    count: int


def transform_matrices(kind: str, value, batch: int, height: int, width: int, device=None):
    """The ``(B, 2, 3)`` float32 matrices of one fixed transform about the image centre.

    Args:
        kind (str): ``"rotation"`` (``value`` in degrees, counter-clockwise on
            screen), ``"translation"`` (``value`` a fraction of the size: a number
            shifts along x by ``value * width``; a pair ``(fx, fy)`` shifts along
            both), ``"scale"`` (zoom factor, above 1 enlarges), ``"shear"``
            (x-shear in degrees) or ``"hflip"`` (a bool: mirror left-right).
        value: the transform's parameter, see ``kind``.
        batch (int): number of copies ``B``.
        height (int), width (int): the image size, which fixes the centre.
        device: where to build the matrices. Default: CPU.

    Returns:
        Tensor[B, 2, 3], float32.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    zeros = torch.zeros(batch, device=device)
    params = {
        "angle": zeros,
        "translate": torch.zeros(batch, 2, device=device),
        "scale": torch.ones(batch, device=device),
        "shear": torch.zeros(batch, 2, device=device),
        "hflip": torch.zeros(batch, dtype=torch.bool, device=device),
    }
    if kind == "hflip":
        if not isinstance(value, (bool, numbers.Integral)):
            raise ValueError(f"hflip values must be bools, got {value!r}")
        params["hflip"] = torch.full((batch,), bool(value), device=device)
    elif kind == "translation":
        if isinstance(value, numbers.Number):
            fx, fy = float(value), 0.0
        elif isinstance(value, Sequence) and len(value) == 2:
            fx, fy = float(value[0]), float(value[1])
        else:
            raise ValueError(f"translation values must be a number or (fx, fy), got {value!r}")
        shift = torch.tensor([fx * width, fy * height], device=device)
        params["translate"] = shift.expand(batch, 2)
    else:
        if not isinstance(value, numbers.Number) or isinstance(value, bool):
            raise ValueError(f"{kind} values must be numbers, got {value!r}")
        if kind == "rotation":
            params["angle"] = torch.full((batch,), float(value), device=device)
        elif kind == "scale":
            if value <= 0:
                raise ValueError(f"scale values must be positive, got {value!r}")
            params["scale"] = torch.full((batch,), float(value), device=device)
        else:
            shear = torch.zeros(batch, 2, device=device)
            shear[:, 0] = float(value)
            params["shear"] = shear
    return geometry.affine_matrices(height, width, **params)


def _model_device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


@torch.no_grad()
def invariance_sweep(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "rotation",
    values: Sequence | None = None,
    batch_size: int = 256,
    **warp_kwargs,
) -> list[SweepPoint]:
    """Accuracy and prediction drift of a classifier under fixed transforms.

    For every value, each image is warped by the same fixed transform about its
    centre (see :func:`transform_matrices`) with :func:`invfast.affine_warp`;
    the model classifies the original and the warped batch. The model runs in
    eval mode under ``torch.no_grad()`` (its train/eval state is restored
    afterwards), in batches of ``batch_size``, on the device of its first
    parameter or buffer (the images' device when it has neither). The
    originals are classified once per batch and compared with every value.

    Args:
        model (nn.Module): maps ``Tensor[B, C, H, W]`` to logits ``Tensor[B, K]``.
        images (Tensor[N, C, H, W]): floating point, any device; moved batch by batch.
        labels (Tensor[N]): integer class indices.
        kind (str): ``"rotation"``, ``"translation"``, ``"scale"``, ``"shear"``
            or ``"hflip"``. Default: ``"rotation"``.
        values (sequence, optional): the transforms' parameters, in the units of
            :func:`transform_matrices`. Default: ``DEFAULT_VALUES[kind]``.
        batch_size (int): images per forward pass. Default: 256.
        **warp_kwargs: passed to :func:`invfast.affine_warp` (``mode``,
            ``padding_mode``, ``align_corners``, ``fill``).

    Returns:
        list[SweepPoint]: one per value, in order, with ``accuracy`` in [0, 1]
        and ``kl``, the mean of ``KL(p_orig || p_warped)`` in nats (0 for a
        value that leaves the images unchanged). KL is computed in float32
        (float64 for float64 logits) from log-softmaxes.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> points = invariance_sweep(model, torch.rand(10, 1, 8, 8), torch.zeros(10).long(),
        ...                           kind="rotation", values=[0, 90])
        >>> points[0].kl
        0.0
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    values = list(DEFAULT_VALUES[kind] if values is None else values)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {getattr(images, 'shape', images)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must be (N,) = ({images.shape[0]},), got {getattr(labels, 'shape', labels)}"
        )
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    # Validate every value before the first forward pass.
    for value in values:
        transform_matrices(kind, value, 1, 2, 2)

    device = _model_device(model, images.device)
    N, _, H, W = images.shape
    correct = torch.zeros(len(values), dtype=torch.int64, device=device)
    kl_sum = torch.zeros(len(values), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, N, batch_size):
            batch = images[start : start + batch_size].to(device)
            target = labels[start : start + batch_size].to(device)
            log_p = _log_probs(model(batch))
            for i, value in enumerate(values):
                matrices = transform_matrices(kind, value, batch.shape[0], H, W, device=device)
                warped = functional.affine_warp(batch, matrices, **warp_kwargs)
                logits = model(warped)
                log_q = _log_probs(logits)
                correct[i] += (logits.argmax(dim=1) == target).sum()
                # KL(p || q) = sum_c p_c (log p_c - log q_c), exactly 0 when q == p.
                kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
                kl_sum[i] += kl.double()
    finally:
        model.train(was_training)

    count = max(N, 1)
    accuracy = (correct.double() / count).tolist()
    kl = (kl_sum / count).tolist()
    return [
        SweepPoint(kind=kind, value=v, accuracy=a, kl=k, count=N)
        for v, a, k in zip(values, accuracy, kl)
    ]


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.log_softmax(logits.to(dtype), dim=1)
