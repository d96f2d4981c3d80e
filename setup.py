"""Builds invfast's C++ (and, where nvcc is found, CUDA) kernels as invfast._C.

Knobs, all environment variables:

- ``INVFAST_CUDA``: ``auto`` (default) builds the CUDA kernels when torch has
  CUDA and ``nvcc`` is found; ``0`` never; ``1`` always (fails without nvcc).
- ``TORCH_CUDA_ARCH_LIST``: GPU architectures, default ``8.0;9.0``.
- ``CUDA_HOME``: the CUDA toolkit. When unset it is taken from what ``nvcc``
  on the PATH really runs, which also sees through wrapper scripts.
- ``MAX_JOBS``: parallel compile jobs, default from cores and memory.
- ``INVFAST_LOCAL_VERSION``: ``1`` appends what the build is for to the
  version, as a local version (``0.1.0+torch2.14cu130``, ``0.1.0+torch2.14cpu``),
  so a wheel's name says which torch and CUDA it needs; ``make wheel`` sets it.
- ``INVFAST_SANITIZE``: ``1`` builds the C++ kernels with AddressSanitizer and
  UndefinedBehaviorSanitizer (CPU only; see ``make sanitize``).

Build against the installed torch: ``pip install --no-build-isolation -e .``.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "invfast", "__init__.py")) as f:
    VERSION = re.search(r'^__version__ = "(.+)"$', f.read(), re.MULTILINE).group(1)


def log(msg):
    print(f"invfast setup: {msg}", file=sys.stderr)


def find_cuda_home():
    """The toolkit folder of the nvcc on the PATH (None if there is none)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        # `nvcc --dryrun` prints the toolkit it belongs to as "#$ TOP=...".
        res = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
        match = re.search(r"^#\$ TOP=(.+)$", res.stderr, re.MULTILINE)
        if match:
            return os.path.realpath(match.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def default_jobs():
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 8
    # nvcc takes up to ~3 GiB per job on the larger kernels.
    return max(1, min(cores, int(mem_gib // 3)))


def want_cuda():
    knob = os.environ.get("INVFAST_CUDA", "auto").lower()
    if knob in ("0", "false", "off", "no"):
        return False, "INVFAST_CUDA=0"
    import torch

    cuda_home = find_cuda_home()
    if cuda_home is None or torch.version.cuda is None:
        reason = "no nvcc found" if cuda_home is None else "torch was built without CUDA"
        if knob in ("1", "true", "on", "yes"):
            raise RuntimeError(f"INVFAST_CUDA=1 but {reason}")
        return False, reason
    os.environ["CUDA_HOME"] = cuda_home
    return True, f"nvcc in {cuda_home}"


def extensions():
    import torch
    from torch.utils import cpp_extension

    # cpp_extension reads CUDA_HOME when imported; settle it first.
    with_cuda, why = want_cuda()
    if with_cuda:
        import importlib

        importlib.reload(cpp_extension)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    os.environ.setdefault("MAX_JOBS", str(default_jobs()))

    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    torch_version = torch.__version__.split("+")[0]
    cuda_version = torch.version.cuda if with_cuda else "none"
    defines = [
        ("INVFAST_PYTHON_MODULE", None),
        ("INVFAST_VERSION", f'"{VERSION}"'),
        ("INVFAST_TORCH_VERSION", f'"{torch_version}"'),
        ("INVFAST_CUDA_VERSION", f'"{cuda_version}"'),
    ]
    # at::parallel_for is inlined into the kernels: without OpenMP here it runs
    # on one thread, whatever torch.set_num_threads says.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx_flags = ["-O3", "-fdiagnostics-color=always", *openmp]
    link_flags = [*openmp]
    if os.environ.get("INVFAST_SANITIZE") == "1":
        if with_cuda:
            raise RuntimeError("INVFAST_SANITIZE=1 builds the CPU kernels only: set INVFAST_CUDA=0")
        # float-cast-overflow: a float converted to an integer it does not fit
        # (not part of GCC's "undefined" group).
        sanitize = [
            "-fsanitize=address,undefined,float-cast-overflow",
            "-fno-sanitize-recover=undefined,float-cast-overflow",
        ]
        cxx_flags = ["-O1", "-g", "-fno-omit-frame-pointer", *openmp, *sanitize]
        link_flags = [*openmp, *sanitize]
        log("sanitizers: AddressSanitizer, UndefinedBehaviorSanitizer (float-cast-overflow too)")
    log(f"torch {torch.__version__}, C++ kernels: yes ({len(sources)} files)")
    if with_cuda:
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        log(f"CUDA kernels: yes ({why}; CUDA {torch.version.cuda}; architectures {archs})")
        nvcc_flags = ["-O3"]
        # Torch's CUDA wheels ship the library headers that a bare toolkit may lack.
        extra_includes = glob.glob(
            os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include")
        )
        ext = cpp_extension.CUDAExtension(
            "invfast._C",
            sources + cuda_sources,
            include_dirs=[os.path.realpath(p) for p in extra_includes],
            define_macros=defines + [("INVFAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    else:
        log(f"CUDA kernels: no ({why})")
        ext = cpp_extension.CppExtension(
            "invfast._C",
            sources,
            define_macros=defines,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    log(f"parallel jobs: {os.environ['MAX_JOBS']}")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


def local_version(with_cuda):
    """What the build is for, as a PEP 440 local version: ``torch2.14cu130`` or ``torch2.14cpu``."""
    import torch

    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda else "cpu"
    return f"torch{torch_mm}{cuda}"


ext_modules, cmdclass = extensions()
if os.environ.get("INVFAST_LOCAL_VERSION", "0").lower() in ("1", "true", "on", "yes"):
    with_cuda = any(src.endswith(".cu") for src in ext_modules[0].sources)
    VERSION = f"{VERSION}+{local_version(with_cuda)}"
    log(f"version {VERSION} (INVFAST_LOCAL_VERSION)")

setup(
    name="invfast",
    version=VERSION,
    packages=find_packages(include=["invfast", "invfast.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
