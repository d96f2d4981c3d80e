"""The examples run: the invariance training comparison and the DDP script."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytest.importorskip("sklearn", reason="the examples train on scikit-learn's digits")


def run(args, timeout, **env):
    res = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout


def test_train_invariance_quick(tmp_path):
    out = run([str(EXAMPLES / "train_invariance.py"), "--quick", "--out", str(tmp_path)], 300)
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| run | clean | rot ±15°")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["none", "augment", "augment+KL"]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert all(0.0 <= float(c) <= 100.0 for c in cells[:-1]), line
        assert float(cells[-1]) >= 0.0
    assert (tmp_path / "train_invariance.png").stat().st_size > 1000


def test_ddp_two_ranks_on_gloo():
    out = run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(EXAMPLES / "ddp_train.py"), "--steps", "4", "--batch-size", "16"],
        300,
    )
    assert "world 2 (gloo)" in out or "world 2 (nccl)" in out, out
    assert "ranks drew different views: True; parameters in sync: True" in out, out
