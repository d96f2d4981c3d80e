"""The benchmark runner: turn-taking timing, peak memory, and its three outputs."""

import json

import pytest
import torch

from invfast.bench import runner


def test_providers_take_turns():
    log = []

    def provider(name):
        return lambda: log.append(name)

    rounds = 4
    timed = runner.time_providers([provider("a"), provider("b")], "cpu", 0.02, rounds=rounds)
    assert all(isinstance(t, list) and t for t in timed)
    # Warm-up and the first timed call of each, then the rounds: a's blocks, b's blocks, ...
    turns = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    assert turns == ["a", "b"] * (rounds + 1)


def test_a_provider_that_raises_is_reported_and_the_others_measured():
    def broken():
        raise RuntimeError("not for this shape")

    timed = runner.time_providers([broken, lambda: torch.ones(4).sum()], "cpu", 0.01, rounds=2)
    assert isinstance(timed[0], RuntimeError)
    assert isinstance(timed[1], list) and len(timed[1]) >= 2
    assert all(t > 0 for t in timed[1])


def test_a_provider_that_fails_later_is_reported():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) > 3:
            raise ValueError("ran out")

    (timed,) = runner.time_providers([flaky], "cpu", 0.01, rounds=3)
    assert isinstance(timed, ValueError)


def test_cpu_peak_memory_counts_what_a_call_allocates():
    n = 2 * 2**20  # 8 MiB of float32
    x = torch.rand(n)
    buf = torch.empty_like(x)
    fresh = runner.peak_memory_mib(lambda: (x * 2 + 1).sum(), "cpu")
    reused = runner.peak_memory_mib(lambda: torch.mul(x, 2, out=buf), "cpu")
    if fresh is None:
        pytest.skip("this build's profiler records no CPU memory events")
    # x * 2 and (x * 2) + 1 are alive together: two 8 MiB temporaries.
    assert 16 <= fresh < 17
    assert reused < 0.1
    assert runner.peak_memory_mib(lambda: None, "cpu") == 0.0
    # The running total of earlier profiles does not leak into a later one.
    assert runner.peak_memory_mib(lambda: (x * 2 + 1).sum(), "cpu") == pytest.approx(fresh)


def test_run_writes_table_json_lines_and_chart(tmp_path, capsys):
    x = torch.rand(64, 1000)

    def cases(device, quick):
        providers = [
            runner.Provider("invfast-like", lambda: torch.softmax(x, 1)),
            runner.Provider("peer", lambda: torch.exp(x) / torch.exp(x).sum(1, keepdim=True)),
            runner.Provider("broken peer", lambda: x.view(7, -1)),
        ]
        return [runner.Case("fake", "softmax (64, 1000)", 64, "rows", 2 * x.nbytes, providers)]

    out = tmp_path / "bench"
    results = runner.main({"fake": cases}, ["--min-time", "0.05", "--out", str(out)])
    table = capsys.readouterr().out
    assert "| provider | median ms | p20-p80 ms | rows/s |" in table
    assert "| invfast-like is |" in table
    assert "| broken peer | failed: RuntimeError" in table
    # Every row of the table has as many cells as its header.
    body = [line for line in table.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in body}) == 1
    lines = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert [r["provider"] for r in lines] == ["invfast-like", "peer", "broken peer"]
    good = [r for r in results if r.error is None]
    assert all(r.p20_ms <= r.median_ms <= r.p80_ms and r.per_s > 0 for r in good)
    assert lines[2]["error"].startswith("RuntimeError")
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_reference_step_draws_and_warps_as_random_affine():
    from invfast.augment import RandomAffine
    from invfast.bench import augment

    aug = RandomAffine(**augment.PARAMS, hflip=0.5, size=(20, 18), padding_mode="border")
    x = torch.rand(5, 3, 16, 24)
    torch.manual_seed(3)
    expected = aug(x)
    torch.manual_seed(3)
    got = augment.reference_step(aug, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_inductor_vector_width_is_pinned_to_its_own_choice():
    config = pytest.importorskip("torch._inductor.config")
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    saved = config.cpp.simdlen
    try:
        config.cpp.simdlen = None
        isa = pick_vec_isa()
        assert runner.pin_inductor_vector_width() == (isa.bit_width() if isa else None)
        # An explicit choice is the user's and stays.
        config.cpp.simdlen = 256
        assert runner.pin_inductor_vector_width() == 256
    finally:
        config.cpp.simdlen = saved
