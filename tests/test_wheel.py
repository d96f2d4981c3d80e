"""The wheel `make wheel` builds: its name, and that it works where it is installed.

The slow test builds a CPU-only wheel from a copy of the tree (so it shares no
build folder with the working copy), installs it with ``--no-deps`` into a
fresh virtual environment that sees this environment's torch but not its
editable invfast, and runs a smoke test there.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCH_MM = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def setup_version(**env):
    res = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_local_version_names_torch_and_cuda():
    assert setup_version(INVFAST_CUDA="0", INVFAST_LOCAL_VERSION="0") == "0.1.0"
    assert setup_version(INVFAST_CUDA="0", INVFAST_LOCAL_VERSION="1") == f"0.1.0+torch{TORCH_MM}cpu"


def copy_tree(dest: Path):
    """The files git knows of or would add (no build outputs), as `make sanitize` copies them."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def venv_seeing_torch(path: Path) -> Path:
    """A fresh venv whose path holds this environment's packages except invfast."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = Path(sysconfig.get_paths()["purelib"])
    deps = path / "deps"
    deps.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.startswith(("invfast", "__editable__", "_invfast")) or name.endswith(".pth"):
            continue
        (deps / name).symlink_to(entry)
    new_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(new_site, "deps.pth").write_text(f"{deps}\n")
    return python


SMOKE = textwrap.dedent(
    """
    import importlib.metadata, sys, torch, invfast
    from invfast import reference
    assert invfast.__file__.startswith(sys.prefix), invfast.__file__
    info = invfast.backend_info()
    assert info["extension_loaded"], info
    assert info["cpu_kernels"] and info["built_for_torch"] == torch.__version__.split("+")[0]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 9, 11, generator=g)
    matrices = invfast.RandomAffine(degrees=30, scale=(0.8, 1.2)).sample_matrices(images)
    out = invfast.affine_warp(images, matrices)
    ref = reference.affine_warp(images, matrices)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    print(importlib.metadata.version("invfast"), info["built_for_cuda"])
    """
)


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    src = tmp_path / "src"
    copy_tree(src)
    env = {**os.environ, "INVFAST_CUDA": "0", "INVFAST_LOCAL_VERSION": "1", "MAX_JOBS": "2"}
    env.pop("INVFAST_BACKEND", None)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q"]
        + ["--wheel-dir", str(dist), str(src)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    (wheel,) = dist.glob("invfast-*.whl")
    assert wheel.name.startswith(f"invfast-0.1.0+torch{TORCH_MM}cpu-"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.startswith("invfast/_C") and n.endswith(".so") for n in names), names
    assert not any(n.startswith(("tests/", "csrc/", "examples/")) for n in names)

    python = venv_seeing_torch(tmp_path / "venv")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
        + ["--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    smoke = subprocess.run(
        [str(python), "-c", SMOKE],
        cwd=tmp_path,  # not the repository, whose invfast/ would shadow the wheel's
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr[-3000:]
    assert smoke.stdout.split() == [f"0.1.0+torch{TORCH_MM}cpu", "none"]
