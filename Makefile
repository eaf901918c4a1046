# The two commands of the README:
#   make course   set up a virtual environment (first run only) and open the course in JupyterLab
#   make test     set up the same environment and run the whole test suite (library tests and every notebook)
#
# TORCH picks the PyTorch build. The default is the CPU wheel the course is tested with; on a CUDA machine use
#   make course TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.qlora-lessons-installed

.PHONY: course test install clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

course: install
	$(BIN)/python -m qlora_lessons
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/00_start_here.ipynb

test: install
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
