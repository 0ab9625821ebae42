# charrnn: every target installs into the *current* Python environment (the `python3`
# on PATH, or PYTHON=...). Use a virtualenv first if you want isolation:
#   python3 -m venv .venv && . .venv/bin/activate && make demo
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
SUDO   ?=
DEMO_DIR ?= demo

.PHONY: help install install-dev install-torch install-mpi demo test test-fast lint bench bench-quality soak clean

help:
	@echo "make demo          install, prepare a built-in corpus, train ~1 minute, sample"
	@echo "make test          install test dependencies and run the whole suite"
	@echo "make bench         side-by-side benchmarks against PyTorch (installs the [torch] extra)"
	@echo "make bench-quality 10-minute tinyshakespeare quality run (opt-in)"
	@echo "make soak          200 train/kill/resume cycles and a 1 GiB eval --lines line (opt-in)"
	@echo "make install-mpi   Open MPI (apt) + mpi4py, for mpirun -n N charrnn train"

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e '.[dev]'

install-torch:
	$(PIP) install -q -e '.[torch]'

# Open MPI (apt-get, as root; otherwise SUDO=sudo) and mpi4py, for `mpirun -n N charrnn train`.
# Never fails: without MPI the MPI tests are skipped (with the reason), so `make test` and
# CI stay green on machines where apt-get is missing or not allowed.
install-mpi:
	@if ! command -v mpirun >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || [ -n "$(SUDO)" ]; }; then \
	    echo "make install-mpi: apt-get install openmpi-bin libopenmpi-dev" >&2; \
	    { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	        -y -qq openmpi-bin libopenmpi-dev >/dev/null; } \
	    || echo "make install-mpi: apt-get could not install Open MPI; MPI tests will be skipped" >&2; \
	  else \
	    echo "make install-mpi: mpirun not found; install Open MPI (apt-get install openmpi-bin" \
	         "libopenmpi-dev, or make install-mpi SUDO=sudo); MPI tests will be skipped" >&2; \
	  fi; \
	fi
	@if command -v mpirun >/dev/null 2>&1 && ! $(PYTHON) -c "import mpi4py" 2>/dev/null; then \
	  $(PIP) install -q 'mpi4py>=3.1' \
	  || echo "make install-mpi: pip could not install mpi4py; MPI tests will be skipped" >&2; \
	fi

# A model small enough to learn in one minute: one LSTM layer on one thread (a second
# thread only waits when another process holds a core), the ~100 characters that occur
# at least 100 times, short batches at a high, cosine-decayed learning rate, and a
# 36k-character validation split that is quick to score.
demo: install
	charrnn prepare --corpus python-stdlib -o $(DEMO_DIR)/data --force --val-frac 0.003 \
	    --min-count 100
	charrnn train $(DEMO_DIR)/data -o $(DEMO_DIR)/run --restart --max-time 1m \
	    --layers 1 --hidden 128 --seq-len 32 --batch-size 32 --lr 2e-2 \
	    --schedule cosine --warmup-iters 50 --eval-every 1000 --threads 1
	charrnn sample $(DEMO_DIR)/run -n 600 --temperature 0.8 --seed 1

# one pytest-xdist worker per core (TEST_WORKERS=1: one after another, as plain pytest);
# an idle worker takes pending tests from the busy one (worksteal), so a run of long
# compiling tests at the end does not leave a core idle
TEST_WORKERS ?= auto
test: install-dev install-mpi
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint:
	$(PYTHON) -m ruff check charrnn tests benchmarks

# compileall: bytecode as an installed package has it (pip writes it; with
# PYTHONDONTWRITEBYTECODE set, an editable checkout compiles its modules at every start)
bench: install-torch
	$(PYTHON) -m compileall -q charrnn
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/run.py --out benchmarks/results.md

bench-quality: install
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/quality.py

soak: install-dev
	CHARRNN_SOAK=1 $(PYTHON) -m pytest -q tests/test_soak.py

clean:
	rm -rf build dist *.egg-info .pytest_cache $(DEMO_DIR)
