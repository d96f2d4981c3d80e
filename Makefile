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

.PHONY: venv build demo test test-cuda lint format bench clean

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
