"""RandomAffine's parameter sampling with plain PyTorch ops.

``counter_uniform`` hashes integers with int64 tensor ops, and
``random_affine_matrices`` turns a batch of uniforms into matrices with
element-wise ops over the batch, about 40 of them: the oracle and the fallback
of the fused ``invfast::counter_uniform`` and ``invfast::random_affine_matrices``.
"""

from __future__ import annotations

import math

import torch

from .. import geometry

# ---------------------------------------------------------------------------
# Counter-based random numbers: a pure integer hash of (seed, step, sample id,
# draw), written with int64 tensor ops that are exact on every device.

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def signed(c: int) -> int:
    """The int64 with the low 64 bits of ``c``."""
    c &= MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


def mix_int(z: int) -> int:
    """splitmix64's finaliser on Python ints (host side, for int seeds and steps)."""
    z = (z + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    # NOTE: >> on int64 tensors is arithmetic; the mask makes it a logical shift.
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors; products wrap modulo 2^64 on CPU and CUDA."""
    z = z + signed(GOLDEN)
    z = (z ^ _shr(z, 30)) * signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * signed(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


def _key_tensor(value, device: torch.device) -> torch.Tensor:
    """A seed or step as an int64 tensor; an int is taken modulo 2^64, as the op takes it."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.int64)
    return torch.tensor(signed(int(value)), dtype=torch.int64, device=device)


def counter_uniform(seed, step, sample_ids: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` uniform numbers in [0, 1) per sample, a pure function of (seed, step, id).

    See :func:`invfast.augment.counter_uniform`.

    Args:
        seed (int or Tensor[]): the stream.
        step (int or Tensor[]): the training step; int64.
        sample_ids (Tensor[B], int64): the samples' global indices.
        n (int): numbers per sample.

    Returns:
        Tensor[B, n], float64 with 24 random bits.
    """
    ids = sample_ids.to(torch.int64)
    if isinstance(seed, torch.Tensor) or isinstance(step, torch.Tensor):
        seed_t, step_t = (_key_tensor(v, ids.device) for v in (seed, step))
        key = _mix(_mix(seed_t) + step_t)
    else:
        key = signed(mix_int((mix_int(int(seed) & MASK64) + int(step)) & MASK64))
    per_sample = _mix(ids + key)
    draws = torch.arange(n, dtype=torch.int64, device=ids.device) * signed(GOLDEN)
    z = _mix(per_sample[:, None] + draws)
    return _shr(z, 40).to(torch.float64) * (1.0 / (1 << 24))


# ---------------------------------------------------------------------------
# Matrices from uniforms.


def random_affine_matrices(
    u: torch.Tensor,
    *,
    degrees,
    angles,
    translate,
    scale,
    shear,
    hflip: float,
    vflip: float,
    p: float,
    crop_scale,
    crop_ratio,
    input_size: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """One ``(2, 3)`` matrix per row of uniforms, as :class:`invfast.RandomAffine` draws it.

    Each draw reads its own column of ``u``: 0 the rotation, 1 the choice among
    ``angles``, 2 and 3 the shift, 4 the zoom, 5 and 6 the shears, 7 and 8 the
    flips, 9 whether the sample is transformed, 10 to 13 the crop.

    Args:
        u (Tensor[B, 14], float64): uniforms in [0, 1), any strides.
        degrees ((float, float) or None): rotation range in degrees.
        angles (tuple of float or None): rotations to choose from, added to ``degrees``.
        translate ((float, float) or None): largest shift as fractions of W' and H'.
        scale ((float, float) or None): zoom range.
        shear (pair of ((float, float) or None)): x and y shear ranges in degrees.
        hflip, vflip (float): flip probabilities.
        p (float): probability that a sample is transformed at all.
        crop_scale ((float, float) or None): area range of a resized crop first.
        crop_ratio ((float, float)): the crop's aspect ratio range (width / height).
        input_size ((int, int)): the images' (H, W).
        size ((int, int)): the output's (H', W').

    Returns:
        Tensor[B, 2, 3], float32 on ``u``'s device.
    """
    B = u.shape[0]
    H, W = input_size
    Ho, Wo = size
    f64 = dict(device=u.device, dtype=torch.float64)

    def draw(col, rng, default):
        if rng is None:
            return torch.full((B,), default, **f64)
        return rng[0] + (rng[1] - rng[0]) * u[:, col]

    angle = draw(0, degrees, 0.0)
    if angles is not None:
        choices = torch.tensor(angles, **f64)
        pick = (u[:, 1] * len(angles)).long().clamp_(max=len(angles) - 1)
        angle = angle + choices[pick]
    if translate is not None:
        tx = (2 * u[:, 2] - 1) * (translate[0] * Wo)
        ty = (2 * u[:, 3] - 1) * (translate[1] * Ho)
    else:
        tx = ty = torch.zeros(B, **f64)
    scale = draw(4, scale, 1.0)
    shear = torch.stack([draw(5, shear[0], 0.0), draw(6, shear[1], 0.0)], dim=-1)
    matrices = geometry.affine_matrices(
        Ho,
        Wo,
        angle=angle,
        translate=torch.stack([tx, ty], dim=-1),
        scale=scale,
        shear=shear,
        hflip=u[:, 7] < hflip,
        vflip=u[:, 8] < vflip,
    )
    if crop_scale is not None:
        crop = _crop_matrices(u[:, 10:14], crop_scale, crop_ratio, H, W, Ho, Wo)
        matrices = geometry.compose(crop, matrices)[:, :2]
    if p < 1.0:
        identity = torch.eye(2, 3, **f64).expand_as(matrices)
        matrices = torch.where((u[:, 9] < p)[:, None, None], matrices, identity)
    return matrices.to(torch.float32)


def _crop_matrices(u, crop_scale, crop_ratio, H, W, Ho, Wo):
    """Maps a random crop box of the input onto the whole (Ho, Wo) output."""
    area = (crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[:, 0]) * (H * W)
    lo, hi = math.log(crop_ratio[0]), math.log(crop_ratio[1])
    ratio = torch.exp(lo + (hi - lo) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=W)
    h = torch.sqrt(area / ratio).clamp(max=H)
    x0 = (W - w) * u[:, 2]
    y0 = (H - h) * u[:, 3]
    # Output pixel centre u reads input x = x0 + (u + 0.5) w / Wo - 0.5.
    sx, sy = Wo / w, Ho / h
    zero = torch.zeros_like(sx)
    return torch.stack(
        [
            torch.stack([sx, zero, (0.5 - x0) * sx - 0.5], dim=-1),
            torch.stack([zero, sy, (0.5 - y0) * sy - 0.5], dim=-1),
        ],
        dim=-2,
    )
