# The two commands of the README:
#   make course   set up a virtual environment with the course extra (first run only) and open the course in
#                 JupyterLab: your copies of the lessons in workspace/ (git ignores it; lessons not there yet are
#                 copied from notebooks/)
#   make test     add the test tools (the dev and site extras) and run the whole test suite (library tests and every
#                 notebook)
# and for learners:
#   make fresh LESSON=04   a fresh copy of one lesson in workspace/ (the old copy goes to workspace/backup/)
# and, for a workshop in a room without reliable Wi-Fi (workshop/README.md):
#   make wheelhouse   download every wheel the course needs into wheelhouse/ (for a USB stick or a local share);
#                     PLATFORM (one or more wheel platform tags) and PYTHON_VERSION pick another machine's wheels,
#                     e.g. make wheelhouse PYTHON_VERSION=3.12 PLATFORM="manylinux_2_28_x86_64 manylinux_2_17_x86_64"
#                     (pip evaluates dependency markers for the machine it runs on: build a macOS or Windows
#                     wheelhouse on a machine of that system, with PLATFORM left empty; workshop/README.md)
#   make course       with wheelhouse/ present, installs from it alone (pip --no-index): no network needed
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
# the course's packages as wheels: `make wheelhouse` fills it; when it holds wheels, installs use it and no index
WHEELHOUSE ?= wheelhouse
PLATFORM ?=
PYTHON_VERSION ?=
# where the CPU build of torch comes from (PyPI's Linux torch is the CUDA build, several GB with its libraries)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
OFFLINE := $(if $(wildcard $(WHEELHOUSE)/*.whl),--no-index --find-links $(WHEELHOUSE))
PIP := $(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) $(OFFLINE)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOWNLOAD := $(PYTHON) -m pip download --quiet --only-binary=:all: --dest $(WHEELHOUSE) --find-links $(WHEELHOUSE) \
	$(foreach tag,$(PLATFORM),--platform $(tag)) $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION) \
	--implementation cp) $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

# Settings that make this CPU compute like another one (see CONTRIBUTING.md, "Other machines").
PORTABLE_kernels := ATEN_CPU_CAPABILITY=default
PORTABLE_threads := OMP_NUM_THREADS=1
PORTABLE_both-at-once := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1

.PHONY: course fresh test test-portable install install-course gpu-check clean-venv site wheelhouse

# $(VENV)/.qlora-lessons-course: the environment with the course extra installed (JupyterLab, ipywidgets,
# matplotlib); -dev: the course and its test tools (the dev extra includes the course extra)
$(VENV)/.qlora-lessons-%: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade $(OFFLINE) pip
	$(PIP) $(TORCH)
	$(PIP) -e ".[$*]"
	touch $@

install-course: $(VENV)/.qlora-lessons-course

install: $(VENV)/.qlora-lessons-dev

# The website's tools (pyproject.toml's site extra: Sphinx, myst-nb, furo, MathJax, Playwright for the browser
# test) are for `make site` and `make test`, not for a learner's `make course`: Playwright alone is 165 MB.
$(VENV)/.qlora-lessons-site: $(VENV)/.qlora-lessons-dev
	$(PIP) -e ".[dev,site]"
	touch $@

course: install-course
	$(BIN)/python -m qlora_lessons
	$(BIN)/python -m qlora_lessons.workspace prepare
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) workspace/00_start_here.ipynb

fresh: install-course
	@test -n "$(LESSON)" || { echo "usage: make fresh LESSON=04"; exit 2; }
	$(BIN)/python -m qlora_lessons.workspace fresh $(LESSON)

# PYTEST_ARGS narrows or extends the run, e.g. PYTEST_ARGS='-m "not notebook_run"' leaves out the lessons run
# again top to bottom (other seeds, another model), which .ci/run schedules beside the portable notebooks
test: install $(VENV)/.qlora-lessons-site
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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

site: $(VENV)/.qlora-lessons-site
	$(BIN)/python -m sphinx -b html -q -d site/_build/doctrees site site/_build/html
	@echo "site: site/_build/html/index.html"

gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

clean-venv:
	rm -rf $(VENV)

# torch first, from TORCH_INDEX (the CPU build); then the course's own wheel with the course extra and everything
# below it, at the versions of constraints.txt; pip and setuptools too (an editable install builds with setuptools)
wheelhouse:
	mkdir -p $(WHEELHOUSE)
	$(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE) .
	$(DOWNLOAD) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(TORCH)
	$(DOWNLOAD) pip setuptools wheel "$(WHEELHOUSE)/qlora_lessons-$(VERSION)-py3-none-any.whl[course]"
	@echo "$(WHEELHOUSE)/: $$(ls $(WHEELHOUSE) | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1)"
