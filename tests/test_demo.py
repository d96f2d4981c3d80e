"""The main job runs end to end on its real photographs."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("skimage")


def test_demo_runs_on_real_photographs(tmp_path):
    out = tmp_path / "grid.png"
    cmd = [sys.executable, "-m", "invfast", "demo", "--batch", "8", "--size", "96"]
    cmd += ["--min-time", "0.05", "--threads", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "largest |fused - reference|" in text
    diff = float(text.split("largest |fused - reference| over the batch: ")[1].split()[0])
    assert diff < 1e-4
    assert "| invfast RandomAffine (fused kernel) |" in text
    assert "| reference (affine_grid + grid_sample) |" in text
    from PIL import Image

    img = Image.open(out)
    assert img.size[0] > 8 * 96 and img.size[1] > 4 * 96


def test_batch_is_real_images():
    from invfast import demo

    batch = demo.make_batch(8, 64)
    assert batch.shape == (8, 3, 64, 64)
    assert 0 <= batch.min() and batch.max() <= 1
    # Photographs, not noise: neighbouring pixels are strongly correlated.
    dx = (batch[..., 1:] - batch[..., :-1]).abs().mean()
    flat = batch.flatten(1)
    shuffled = flat[:, torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(0))]
    assert dx < 0.3 * (flat - shuffled).abs().mean()
    assert not torch.equal(batch[0], batch[1])
