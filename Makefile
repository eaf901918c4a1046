# The two commands of the README:
#   make course   set up a virtual environment (first run only) and open the course in JupyterLab: your copies of
#                 the lessons in workspace/ (git ignores it; lessons not there yet are copied from notebooks/)
#   make fresh LESSON=04   a fresh copy of one lesson in workspace/ (the old copy goes to workspace/backup/)
#   make test     set up the same environment and run the whole test suite (library tests and every notebook)
# and, for maintainers (CONTRIBUTING.md):
#   make test-portable   the notebooks again as other machines run them: torch's plain (non-vectorized) CPU
#                        kernels, and one thread; VARIANT=kernels or VARIANT=threads runs one of the two,
#                        VARIANT=both-at-once runs them in one pass (what .ci/run does)
#
# TORCH picks the PyTorch build. The default is the CPU wheel the course is tested with; on a CUDA machine use
#   make course TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
# CONSTRAINTS pins every package to the version the course was last tested with (constraints.txt; see
# tools/constraints.py). CONSTRAINTS= (empty) installs the newest releases within pyproject.toml's floors.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
VARIANT ?= kernels threads
BIN := $(VENV)/bin
STAMP := $(VENV)/.qlora-lessons-installed
PIP := $(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

# Settings that make this CPU compute like another one (see CONTRIBUTING.md, "Other machines").
PORTABLE_kernels := ATEN_CPU_CAPABILITY=default
PORTABLE_threads := OMP_NUM_THREADS=1
PORTABLE_both-at-once := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1

.PHONY: course fresh test test-portable install gpu-check clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) $(TORCH)
	$(PIP) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

course: install
	$(BIN)/python -m qlora_lessons
	$(BIN)/python -m qlora_lessons.workspace prepare
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) workspace/00_start_here.ipynb

fresh: install
	@test -n "$(LESSON)" || { echo "usage: make fresh LESSON=04"; exit 2; }
	$(BIN)/python -m qlora_lessons.workspace fresh $(LESSON)

test: install
	$(BIN)/python -m pytest

test-portable: install
	@for variant in $(VARIANT); do \
	  case $$variant in \
	    kernels) settings="$(PORTABLE_kernels)" ;; \
	    threads) settings="$(PORTABLE_threads)" ;; \
	    both-at-once) settings="$(PORTABLE_both-at-once)" ;; \
	    *) echo "VARIANT must be kernels, threads or both-at-once, got '$$variant'"; exit 2 ;; \
	  esac; \
	  echo "== notebooks with $$settings"; \
	  env $$settings $(BIN)/python -m pytest notebooks || exit $$?; \
	done

gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

clean-venv:
	rm -rf $(VENV)
