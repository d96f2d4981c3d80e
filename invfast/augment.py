"""Random geometric augmentation with per-sample parameters drawn on the device."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from . import _ops, functional
from .reference import augment as _ref_augment

# The most angles the CUDA kernel of random_affine_matrices takes (kMaxCudaAngles).
_MAX_CUDA_ANGLES = 64


def _range(name, value, *, center=0.0, bounds=None):
    """Normalises a scalar (symmetric about `center`) or a (lo, hi) pair."""
    if value is None:
        return None
    if isinstance(value, numbers.Number):
        if value < 0:
            raise ValueError(f"{name}: a single value must be non-negative, got {value}")
        lo, hi = center - value, center + value
    elif isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}")
    if lo > hi:
        raise ValueError(f"{name} must have min <= max, got ({lo}, {hi})")
    if bounds is not None and (lo < bounds[0] or hi > bounds[1]):
        raise ValueError(f"{name} must lie within {bounds}, got ({lo}, {hi})")
    return float(lo), float(hi)


def _probability(name, value):
    if not isinstance(value, numbers.Number) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------
# Counter-based random numbers: a pure integer hash of (seed, step, sample id,
# draw); invfast::counter_uniform, or reference.counter_uniform with int64
# tensor ops. Both are exact on every device.


def _key_operand(value, device: torch.device) -> torch.Tensor:
    """A seed or step as the op takes it: one int64 value on the CPU or on ``device``."""
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64:
            value = value.to(torch.int64)
        # A CPU value is read by the launcher and a device one by the kernel;
        # neither needs a copy, but a value on another GPU does.
        if value.device.type != "cpu" and value.device != device:
            value = value.to(device)
        return value
    # scalar_tensor is the cheapest way to a CPU scalar, and keeps every int64 exact.
    return torch.scalar_tensor(_ref_augment.signed(int(value)), dtype=torch.int64)


def _key_value(name: str, value, batch: int):
    """An int, a one-value integer tensor (as a 0-dim one), or one value per sample."""
    if isinstance(value, torch.Tensor):
        per_sample = value.dim() == 1 and value.shape[0] == batch
        if (
            value.is_floating_point()
            or value.is_complex()
            or not (value.numel() == 1 or per_sample)
        ):
            raise ValueError(
                f"counter_uniform: {name} must be an int or an integer tensor holding one value "
                f"or one per sample ({batch}), got a {value.dtype} tensor of shape "
                f"{tuple(value.shape)}"
            )
        return value if per_sample and batch != 1 else value.reshape(())
    if not isinstance(value, numbers.Integral):
        raise ValueError(f"counter_uniform: {name} must be an int, got {value!r}")
    return value


def counter_uniform(seed, step, sample_ids: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` uniform numbers in [0, 1) per sample, a pure function of (seed, step, id).

    A sample gets the same numbers whatever the batch it is in and whatever
    the device: the numbers come from integer hashing (splitmix64's mixer)
    of the key, computed on ``sample_ids``' device by one fused kernel (by
    int64 tensor ops where there is none). No host sync and no generator
    state, so it can be captured in a CUDA graph (pass ``step`` as a device
    tensor that the loop increments in place).

    Args:
        seed (int or Tensor[] or Tensor[B]): the stream; give DDP ranks different
            seeds. One value per sample runs the plain-PyTorch version.
        step (int or Tensor[] or Tensor[B]): the training step (or epoch); int64.
        sample_ids (Tensor[B], int64): the samples' global indices.
        n (int): numbers per sample.

    Returns:
        Tensor[B, n], float64 with 24 random bits (exact on every device).
    """
    ids = sample_ids if sample_ids.dtype == torch.int64 else sample_ids.to(torch.int64)
    seed, step = _key_value("seed", seed, ids.shape[0]), _key_value("step", step, ids.shape[0])
    single = all(not isinstance(v, torch.Tensor) or v.dim() == 0 for v in (seed, step))
    unsupported = None if single else "a seed or step with one value per sample"
    if not _ops.use_kernel("counter_uniform", ids.device, unsupported):
        return _ref_augment.counter_uniform(seed, step, ids, n)
    return torch.ops.invfast.counter_uniform(
        ids, _key_operand(seed, ids.device), _key_operand(step, ids.device), n
    )


class RandomAffine(nn.Module):
    """Per-sample random rotation, shift, zoom, shear, flips and resized crop.

    Every sample of a batch gets its own parameters, drawn on the images'
    device (no host sync), and the batch is warped by one fused kernel
    (:func:`invfast.affine_warp`). Parameter ranges follow torchvision's
    ``RandomAffine`` and ``RandomResizedCrop``.

    Randomness: with ``seed`` set, parameters come from a counter-based
    generator keyed by (seed, step, sample id) (:func:`counter_uniform`): a
    sample gets the same view at any batch size and on any device (up to the
    float rounding of the trigonometry), DDP ranks differ by seed, and the
    draw can be captured in a CUDA graph. Without ``seed``, ``torch.rand``
    with the ``generator`` given to ``forward``.

    Args:
        degrees (float or (float, float)): rotation range in degrees,
            counter-clockwise on screen; a number ``d`` means ``(-d, d)``.
        translate ((float, float), optional): largest shift as a fraction of
            width and height; shifts are drawn from ``[-a W, a W] x [-b H, b H]``.
        scale ((float, float), optional): zoom range. Default: no zoom.
        shear (float or sequence, optional): x-shear range in degrees (a number
            ``s`` means ``(-s, s)``), or four numbers for x and y ranges.
        hflip (float): probability of a left-right mirror. Default: 0.5.
        p (float): probability that a sample is transformed at all; a sample
            left alone gets the identity matrix, which the kernel copies. Default: 1.
        angles (sequence of float, optional): rotations to choose from with
            equal probability (e.g. ``(0, 90, 180, 270)``), added to the
            ``degrees`` draw. Default: none.
        vflip (float): probability of a top-bottom mirror. Default: 0.
        crop_scale ((float, float), optional): a RandomResizedCrop first: the
            crop's area as a fraction of the image's, drawn uniformly, e.g.
            ``(0.08, 1.0)``. The crop fills the output (``size``). Default: no crop.
        crop_ratio ((float, float)): the crop's aspect ratio range (width /
            height), drawn log-uniformly. Default: ``(3/4, 4/3)``.
        seed (int, optional): use the counter-based generator with this seed.
        same_on_batch (bool): one set of parameters for the whole batch (those
            of its first sample). Default: False.
        size ((int, int), optional): output size; default the input's.
        mode, padding_mode, align_corners, fill: passed to :func:`invfast.affine_warp`.

    NOTE: unlike torchvision's RandomResizedCrop, a crop that does not fit is
    not redrawn (that would need a host sync); its sides are clamped to the image.

    Shape:
        - Input: ``(B, C, H, W)``.
        - Output: ``(B, C, H', W')``, and ``(B, 2, 3)`` matrices with
          ``return_matrices=True``.

    Example:
        >>> aug = RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.8, 1.2), seed=0)
        >>> images = torch.rand(8, 3, 32, 32)
        >>> views, matrices = aug(images, return_matrices=True, step=3)
        >>> torch.equal(views, invfast.affine_warp(images, matrices))
        True
    """

    _DRAWS = 14

    def __init__(
        self,
        degrees=0.0,
        translate=None,
        scale=None,
        shear=None,
        hflip: float = 0.5,
        p: float = 1.0,
        *,
        angles=None,
        vflip: float = 0.0,
        crop_scale=None,
        crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        seed: int | None = None,
        same_on_batch: bool = False,
        size: tuple[int, int] | None = None,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        align_corners: bool = False,
        fill=0.0,
    ):
        super().__init__()
        self.degrees = _range("degrees", degrees)
        if translate is not None:
            if not (isinstance(translate, Sequence) and len(translate) == 2):
                raise ValueError(f"translate must be a (fx, fy) pair, got {translate!r}")
            for t in translate:
                if not 0.0 <= t <= 1.0:
                    raise ValueError(f"translate fractions must lie in [0, 1], got {translate!r}")
            translate = (float(translate[0]), float(translate[1]))
        self.translate = translate
        self.scale = _range("scale", scale, bounds=(0.0, float("inf")))
        if self.scale is not None and self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if shear is not None and isinstance(shear, Sequence) and len(shear) == 4:
            self.shear = (_range("shear", shear[:2]), _range("shear", shear[2:]))
        else:
            self.shear = (_range("shear", shear), None)
        self.hflip = _probability("hflip", hflip)
        self.vflip = _probability("vflip", vflip)
        self.p = _probability("p", p)
        if angles is not None:
            if (
                not isinstance(angles, Sequence)
                or len(angles) == 0
                or not all(isinstance(a, numbers.Number) for a in angles)
            ):
                raise ValueError(f"angles must be a non-empty sequence of numbers, got {angles!r}")
            angles = tuple(float(a) for a in angles)
        self.angles = angles
        self.crop_scale = _range("crop_scale", crop_scale, bounds=(0.0, 1.0))
        if self.crop_scale is not None and self.crop_scale[0] <= 0:
            raise ValueError(f"crop_scale must lie in (0, 1], got {crop_scale!r}")
        self.crop_ratio = _range("crop_ratio", crop_ratio, bounds=(0.0, float("inf")))
        if self.crop_ratio is None or self.crop_ratio[0] <= 0:
            raise ValueError(f"crop_ratio must be a positive (min, max) pair, got {crop_ratio!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.same_on_batch = bool(same_on_batch)
        if size is not None and not (
            isinstance(size, Sequence) and len(size) == 2 and all(int(s) > 0 for s in size)
        ):
            raise ValueError(f"size must be two positive ints (H', W'), got {size!r}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.mode, self.padding_mode = mode, padding_mode
        self.align_corners, self.fill = align_corners, fill

    def _uniforms(self, B, device, generator, sample_ids, step):
        n = self._DRAWS
        if self.seed is not None:
            if sample_ids is None:
                sample_ids = torch.arange(B, device=device)
            elif not isinstance(sample_ids, torch.Tensor) or sample_ids.shape != (B,):
                raise ValueError(
                    f"RandomAffine: sample_ids must be a tensor of shape ({B},), got "
                    f"{getattr(sample_ids, 'shape', sample_ids)}"
                )
            ids = sample_ids.to(device)
            if self.same_on_batch:
                ids = ids[:1].expand(B)
            return counter_uniform(self.seed, step, ids, n)
        rows = 1 if self.same_on_batch else B
        u = torch.rand(rows, n, generator=generator, device=device, dtype=torch.float64)
        return u.expand(B, n)

    def warp_options(self) -> dict:
        """The keyword arguments this module passes to :func:`invfast.affine_warp`."""
        return dict(
            mode=self.mode,
            padding_mode=self.padding_mode,
            align_corners=self.align_corners,
            fill=self.fill,
            size=self.size,
        )

    def reference_matrices(self, uniforms: torch.Tensor, input_size) -> torch.Tensor:
        """The matrices of :meth:`sample_matrices` from given uniforms, in plain PyTorch.

        Args:
            uniforms (Tensor[B, 14], float64): the draws of each sample.
            input_size ((int, int)): the images' (H, W).
        """
        return _ref_augment.random_affine_matrices(
            uniforms,
            degrees=self.degrees,
            angles=self.angles,
            translate=self.translate,
            scale=self.scale,
            shear=self.shear,
            hflip=self.hflip,
            vflip=self.vflip,
            p=self.p,
            crop_scale=self.crop_scale,
            crop_ratio=self.crop_ratio,
            input_size=tuple(input_size),
            size=self.size or tuple(input_size),
        )

    def sample_matrices(
        self,
        images: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        sample_ids: torch.Tensor | None = None,
        step=0,
    ) -> torch.Tensor:
        """Draws one ``(2, 3)`` matrix per sample, float32 on the images' device."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(
                f"RandomAffine: images must be (B, C, H, W), got {getattr(images, 'shape', images)}"
            )
        B, _, H, W = images.shape
        Ho, Wo = (H, W) if self.size is None else self.size
        device = images.device
        u = self._uniforms(B, device, generator, sample_ids, step)
        if not _ops.use_kernel("random_affine_matrices", device, self._unsupported(device)):
            return self.reference_matrices(u, (H, W))
        # An absent range is passed as the one that always draws the default,
        # which gives the same bits (see csrc/augment/augment_math.h).
        zero = (0.0, 0.0)
        params = [
            *(self.degrees or zero),
            *(self.translate or zero),
            *(self.scale or (1.0, 1.0)),
            *(self.shear[0] or zero),
            *(self.shear[1] or zero),
            self.hflip,
            self.vflip,
            self.p,
        ]
        crop = [] if self.crop_scale is None else [*self.crop_scale, *self.crop_ratio]
        return torch.ops.invfast.random_affine_matrices(
            u, params, list(self.angles or ()), crop, [H, W, Ho, Wo]
        )

    def _unsupported(self, device: torch.device) -> str | None:
        many = self.angles is not None and len(self.angles) > _MAX_CUDA_ANGLES
        if device.type == "cuda" and many:
            return f"more than {_MAX_CUDA_ANGLES} angles on CUDA"
        return None

    def forward(
        self,
        images: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        return_matrices: bool = False,
        sample_ids: torch.Tensor | None = None,
        step=0,
        out: torch.Tensor | None = None,
    ):
        """Warps ``images`` (Tensor[B, C, H, W]) by freshly drawn matrices.

        Args:
            images (Tensor[B, C, H, W]): any dtype and layout :func:`affine_warp` takes.
            generator (torch.Generator, optional): for ``torch.rand`` when ``seed`` is None.
            return_matrices (bool): also return the ``(B, 2, 3)`` float32 matrices.
            sample_ids (Tensor[B], int64, optional): the samples' global indices,
                for the counter-based generator. Default: ``arange(B)``.
            step (int or Tensor[]): the training step, for the counter-based generator.
            out (Tensor, optional): where to write the views, as :func:`affine_warp`'s
                ``out``. One buffer reused across steps saves allocating the output on
                every call, which for large batches is a good part of the cost on CPU.
                Nothing the previous step still needs may live in it.
        """
        matrices = self.sample_matrices(
            images, generator=generator, sample_ids=sample_ids, step=step
        )
        views = functional.affine_warp(images, matrices, **self.warp_options(), out=out)
        return (views, matrices) if return_matrices else views

    def extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"shear={self.shear}, hflip={self.hflip}, vflip={self.vflip}, p={self.p}, "
            f"angles={self.angles}, crop_scale={self.crop_scale}, seed={self.seed}, "
            f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"
        )
