# `make demo` and `make test` set everything up themselves: a virtual
# environment in .venv with the pinned torch, the compiled extension, then the job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
THREADS ?= 2

# The nvcc on the PATH may be a wrapper script; ask it which toolkit it runs.
CUDA_HOME ?= $(shell nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ TOP=//p' | head -n 1)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export CUDA_HOME TORCH_CUDA_ARCH_LIST

.PHONY: venv build demo test lint format bench sanitize clean cpp-test cmake-lib wheel

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Rebuilds only what changed (ninja); a lock keeps parallel builds apart.
build: venv
	flock .build.lock $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .

demo: build
	OMP_NUM_THREADS=$(THREADS) $(PY) -m invfast demo --threads $(THREADS)

test: build cpp-test
	$(PY) -m pytest -q tests

# Every benchmark family at 2 threads: a markdown table, JSON lines and a chart
# under outputs/, then the same cases as pytest-benchmark tests.
bench: build
	$(PY) -m invfast bench --threads $(THREADS) --out outputs/bench
	$(PY) -m pytest -q benchmarks/test_bench.py --benchmark-only

# The C++ kernels built with AddressSanitizer and UndefinedBehaviorSanitizer in
# a copy of the tree under build/sanitize, and the kernel tests run against them.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS ?= $(wildcard tests/test_affine_warp.py tests/test_losses.py tests/test_robustness.py)
sanitize: venv
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t $(SANITIZE_DIR)
	cd $(SANITIZE_DIR) && INVFAST_CUDA=0 INVFAST_SANITIZE=1 $(CURDIR)/$(PY) setup.py -q build_ext --inplace
	cd $(SANITIZE_DIR) && PYTHONPATH=$(CURDIR)/$(SANITIZE_DIR) \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS) -k "not opcheck"

# C++ unit tests of the HOST_DEVICE math headers: a compiler and cmake, no libtorch.
cpp-test:
	cmake -S . -B build/cmake-tests -DINVFAST_BUILD_LIBRARY=OFF > /dev/null
	cmake --build build/cmake-tests -j $(THREADS)
	ctest --test-dir build/cmake-tests --output-on-failure

# The shared library libinvfast.so against the venv's libtorch (CPU; add
# CMAKE_ARGS=-DINVFAST_WITH_CUDA=ON for the CUDA kernels), then the unit tests.
# A CUDA build of torch wants the toolkit and NVRTC found even for a CPU-only
# library: point CMake at the toolkit nvcc runs and at the NVRTC torch's wheel ships.
TORCH_CMAKE_ARGS = -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
ifneq ($(CUDA_HOME),)
TORCH_CMAKE_ARGS += -DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCUDAToolkit_ROOT=$(CUDA_HOME)
NVRTC := $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/nvidia/cu*/lib/libnvrtc.so*))
ifneq ($(NVRTC),)
TORCH_CMAKE_ARGS += -DCUDA_nvrtc_LIBRARY=$(CURDIR)/$(NVRTC)
endif
endif

cmake-lib: venv
	cmake -S . -B build/cmake $(CMAKE_ARGS) $(TORCH_CMAKE_ARGS)
	cmake --build build/cmake -j $(THREADS)
	ctest --test-dir build/cmake --output-on-failure

# A wheel for the installed torch (and its CUDA, where nvcc is found) whose
# version names both, e.g. invfast-0.1.0+torch2.14cu130-cp311-...whl, in dist/.
# INVFAST_CUDA and TORCH_CUDA_ARCH_LIST choose the kernels, as for `build`.
wheel: venv
	flock .build.lock env INVFAST_LOCAL_VERSION=1 $(PY) -m pip wheel --no-build-isolation \
	  --no-deps --wheel-dir dist .

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $$(find csrc tests/cpp -name '*.h' -o -name '*.cpp' -o -name '*.cu')

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $$(find csrc tests/cpp -name '*.h' -o -name '*.cpp' -o -name '*.cu')

clean:
	rm -rf build dist *.egg-info invfast/*.so .build.lock
