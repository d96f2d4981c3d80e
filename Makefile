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

.PHONY: venv build demo test lint format bench sanitize clean

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

test: build
	$(PY) -m pytest -q tests

# Every benchmark family at 2 threads: a markdown table, JSON lines and a chart
# under outputs/, then the same cases as pytest-benchmark tests.
bench: build
	$(PY) -m invfast bench --threads $(THREADS) --out outputs/bench
	$(PY) -m pytest -q benchmarks/test_bench.py --benchmark-only

# The C++ kernels built with AddressSanitizer and UndefinedBehaviorSanitizer in
# a copy of the tree under build/sanitize, and the kernel tests run against them.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS ?= tests/test_affine_warp.py tests/test_losses.py
sanitize: venv
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t $(SANITIZE_DIR)
	cd $(SANITIZE_DIR) && INVFAST_CUDA=0 INVFAST_SANITIZE=1 $(CURDIR)/$(PY) setup.py -q build_ext --inplace
	cd $(SANITIZE_DIR) && PYTHONPATH=$(CURDIR)/$(SANITIZE_DIR) \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS) -k "not opcheck"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $$(find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu')

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $$(find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu')

clean:
	rm -rf build dist *.egg-info invfast/*.so .build.lock
