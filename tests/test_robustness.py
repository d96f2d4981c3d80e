"""Random inputs against the reference, and calls from several threads at once."""

import threading

import pytest
import torch
from conftest import assert_close

import invfast
from invfast import _ops, reference

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

needs_kernels = pytest.mark.skipif(
    not _ops.has_kernel("affine_warp", "cpu"), reason="compiled kernels not loaded"
)

finite = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def warp_inputs(draw):
    B = draw(st.integers(0, 3))
    C = draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    Ho, Wo = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    # Linear parts away from singular, translations that reach past the image.
    lin = torch.eye(2, dtype=torch.float64) + 0.6 * torch.randn(
        B, 2, 2, generator=g, dtype=torch.float64
    )
    # NOTE: a near-singular matrix magnifies fp32 rounding of the inverse map
    # beyond any fixed tolerance; those are covered by the extreme-value tests.
    det = lin[:, 0, 0] * lin[:, 1, 1] - lin[:, 0, 1] * lin[:, 1, 0]
    assume(bool((det.abs() > 0.3).all()))
    shift = (torch.rand(B, 2, 1, generator=g, dtype=torch.float64) - 0.5) * 3 * max(H, W)
    m = torch.cat([lin, shift], dim=-1)
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    return x, m, (Ho, Wo), layout


@needs_kernels
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    inputs=warp_inputs(),
    mode=st.sampled_from(["bilinear", "nearest"]),
    padding_mode=st.sampled_from(["zeros", "border", "reflection", "fill"]),
    align_corners=st.booleans(),
    fill=finite,
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_warp_matches_reference(inputs, mode, padding_mode, align_corners, fill, dtype):
    x64, m, size, layout = inputs
    x = x64.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners, fill=fill)
    got = invfast.affine_warp(x, m.to(dtype), size=size, **kw)
    expected = reference.affine_warp(x64, m, size=size, **kw)
    assert got.shape == expected.shape and got.dtype == dtype
    assert torch.isfinite(got).all()
    if mode == "nearest":
        # Positions within rounding of a tie between two pixels may go either way.
        differ = (got.double() - expected).abs() > 1e-5
        assert differ.sum() <= max(2, differ.numel() // 50)
    else:
        tol = 1e-5 if dtype == torch.float32 else 1e-9
        assert_close(got, expected, tol, tol, "random warp")


@needs_kernels
def test_concurrent_calls_match_sequential():
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, 40, 50, generator=g) for _ in range(8)]
    aug = invfast.RandomAffine(degrees=40, translate=(0.2, 0.2), scale=(0.7, 1.3), shear=15)
    mats = [aug.sample_matrices(b, generator=g) for b in batches]
    expected = [invfast.affine_warp(b, m, padding_mode="reflection") for b, m in zip(batches, mats)]
    grads_expected = []
    for b, m in zip(batches, mats):
        b = b.clone().requires_grad_()
        invfast.affine_warp(b, m).square().sum().backward()
        grads_expected.append(b.grad)

    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                y = invfast.affine_warp(batches[i], mats[i], padding_mode="reflection")
                b = batches[i].clone().requires_grad_()
                invfast.affine_warp(b, mats[i]).square().sum().backward()
                results[i] = (y, b.grad)
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(len(batches)):
        assert torch.equal(results[i][0], expected[i])
        assert torch.equal(results[i][1], grads_expected[i])


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 1, 46341, 46341), (2, 1, 32769, 32769)])
def test_indices_past_two_to_the_31(shape):
    """uint8 images with more than 2**31 elements: offsets must be 64-bit."""
    B, C, H, W = shape
    assert B * C * H * W > 2**31
    x = torch.zeros(shape, dtype=torch.uint8)  # pages stay untouched but the corner
    x[..., H - 5 :, W - 5 :] = torch.arange(25, dtype=torch.uint8).view(5, 5) + 1
    # Output pixel (u, v) reads input (u + W - 5, v + H - 5): the far corner.
    m = torch.tensor([[1.0, 0.0, -(W - 5.0)], [0.0, 1.0, -(H - 5.0)]]).expand(B, 2, 3)
    y = invfast.affine_warp(x, m, size=(5, 5))
    assert torch.equal(y, x[..., H - 5 :, W - 5 :])
    z = invfast.affine_warp(x, m, size=(5, 5), mode="nearest", padding_mode="border")
    assert torch.equal(z, x[..., H - 5 :, W - 5 :])


@st.composite
def logits_pairs(draw):
    N, C = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1.0, 30.0, 1e4]))
    g = torch.Generator().manual_seed(seed)
    a, b = (scale * torch.randn(2, N, C, generator=g)).unbind(0)
    if draw(st.booleans()) and C > 1:
        # Masked classes: -inf in the same columns of both (a class nobody may pick).
        cols = torch.rand(C, generator=g) < 0.3
        cols[0] = False
        a[:, cols] = b[:, cols] = float("-inf")
    return a, b


@needs_kernels
@settings(max_examples=100, deadline=None, derandomize=True)
@given(pair=logits_pairs(), reduction=st.sampled_from(["none", "sum", "mean", "batchmean"]))
def test_losses_finite_where_reference_is(pair, reduction):
    from invfast import losses as fused
    from invfast.reference import losses as ref

    a, b = pair
    for name in ("kl_consistency", "symmetric_kl", "mse_consistency"):
        got = getattr(fused, name)(a, b, reduction=reduction)
        expected = getattr(ref, name)(a.double(), b.double(), reduction=reduction)
        finite = torch.isfinite(expected)
        assert torch.isfinite(got[finite]).all(), name
        assert (got[finite] >= -1e-5).all(), name
        assert_close(got[finite], expected[finite], 2e-4, 2e-4, name)
    got = fused.js_consistency(a, b, a.flip(0), reduction=reduction)
    expected = ref.js_consistency(a.double(), b.double(), a.double().flip(0), reduction=reduction)
    assert_close(got, expected, 2e-4, 2e-4, "js_consistency")


@needs_kernels
def test_concurrent_loss_calls_match_sequential():
    from invfast import losses

    g = torch.Generator().manual_seed(3)
    pairs = [torch.randn(2, 300, 37, generator=g).unbind(0) for _ in range(6)]

    def compute(a, b):
        a = a.clone().requires_grad_()
        kl = losses.kl_consistency(a, b, teacher_temperature=0.4)
        js = losses.js_consistency(a, b, b.flip(0))
        (kl + js).backward()
        return kl.detach(), js.detach(), a.grad

    expected = [compute(a, b) for a, b in pairs]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = compute(*pairs[i])
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, exp in enumerate(expected):
        for got, want in zip(results[i], exp):
            assert torch.equal(got, want)
