# The README's commands. Every target sets up first (idempotent): torch==2.13.0 when no torch
# is installed (the CPU build; a GPU machine brings its own CUDA torch), triton, test and bench
# dependencies, and an editable build of cvkernels._C against the installed torch.
#   make check   set up, then parity of every kernel on the current device (python -m cvkernels check)
#   make test    set up, then the test suite
#   make bench   set up, then the benchmarks (python -m cvkernels bench)
# PYTHON selects the interpreter / environment (default: python3 of the current environment).

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# pytest workers: the Triton interpreter runs Python, one core per worker
TEST_WORKERS ?= 2
DEPS := triton numpy pytest pytest-benchmark hypothesis matplotlib ninja pybind11 setuptools wheel diffusers pytest-xdist

.PHONY: setup build check test bench info clean

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@$(PYTHON) -c "import triton, numpy, pytest, pytest_benchmark, hypothesis, matplotlib, ninja, pybind11, xdist, importlib.util as u; assert u.find_spec('diffusers')" 2>/dev/null \
		|| $(PIP) install -q $(DEPS)
	@$(MAKE) --no-print-directory build

build:
	$(PIP) install -q --no-deps --no-build-isolation -e .

check: setup
	$(PYTHON) -m cvkernels check

test: setup
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

bench: setup
	$(PYTHON) -m cvkernels bench

info: setup
	$(PYTHON) -m cvkernels info

clean:
	rm -rf build *.egg-info cvkernels/_C*.so
