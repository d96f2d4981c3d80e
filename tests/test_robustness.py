"""Random inputs against the reference, and calls from several threads at once."""

import threading

import pytest
import torch
from conftest import assert_close

import invfast
from invfast import _ops, reference

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
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
    shift = (torch.rand(B, 2, 1, generator=g, dtype=torch.float64) - 0.5) * 3 * max(H, W)
    m = torch.cat([lin, shift], dim=-1)
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    return x, m, (Ho, Wo), layout


@needs_kernels
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
