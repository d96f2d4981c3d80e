import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
]

# (atol, rtol) by dtype, for values in [0, 1].
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(actual, expected, atol, rtol, what=""):
    """assert_close that lists the first mismatching elements when it fails."""
    actual = actual.detach().cpu().double()
    expected = expected.detach().cpu().double()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = bad.nonzero()[:8]
        rows = [
            f"  at {tuple(i.tolist())}: got {actual[tuple(i)].item():.8g}, "
            f"expected {expected[tuple(i)].item():.8g}"
            for i in idx
        ]
        worst = (actual - expected).abs().nan_to_num(0).max().item()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ "
            f"(max abs diff {worst:.3g}, atol {atol}, rtol {rtol}):\n" + "\n".join(rows)
        )
