# The two commands of the README:
#   make course   set up a virtual environment with the course extra (first run only) and open the course in JupyterLab
#   make test     add the test tools (the dev extra) and run the whole test suite (library tests and every notebook)
# and, for maintainers (CONTRIBUTING.md):
#   make site            the course website from the committed, executed notebooks (nothing is executed), into
#                        site/_build/html: open site/_build/html/index.html, or copy the folder anywhere (it reads
#                        offline); .github/workflows/pages.yml publishes it
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
SITE_STAMP := $(VENV)/.qlora-lessons-site-installed
COURSE_STAMP := $(VENV)/.qlora-lessons-course
PIP := $(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

# Settings that make this CPU compute like another one (see CONTRIBUTING.md, "Other machines").
PORTABLE_kernels := ATEN_CPU_CAPABILITY=default
PORTABLE_threads := OMP_NUM_THREADS=1
PORTABLE_both-at-once := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1

.PHONY: course test test-portable install install-course gpu-check clean-venv site

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The course: the library and its course extra (JupyterLab, ipywidgets, matplotlib).
$(COURSE_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[course]"
	touch $(COURSE_STAMP)

# The course and the test tools (the dev extra, which includes the course extra).
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[dev]"
	touch $(STAMP) $(COURSE_STAMP)

install-course: $(COURSE_STAMP)

install: $(STAMP)

# The website's tools (pyproject.toml's site extra: Sphinx, myst-nb, furo, MathJax, Playwright for the browser
# test) are for `make site` and `make test`, not for a learner's `make course`: Playwright alone is 165 MB.
$(SITE_STAMP): $(STAMP)
	$(PIP) -e ".[dev,site]"
	touch $(SITE_STAMP)


course: install-course
	$(BIN)/python -m qlora_lessons
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/00_start_here.ipynb

test: install $(SITE_STAMP)
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

site: $(SITE_STAMP)
	$(BIN)/python -m sphinx -b html -q -d site/_build/doctrees site site/_build/html
	@echo "site: site/_build/html/index.html"

gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

clean-venv:
	rm -rf $(VENV)
