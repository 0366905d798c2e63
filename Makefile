# Two commands for a newcomer on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv (torch==2.13.0 first, so no requirement can pull a newer CUDA build), then install rlscope.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.rlscope-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

.PHONY: setup demo test gpu-check
setup: $(BIN)/.rlscope-installed

demo: setup
	$(BIN)/rlscope demo

test: setup
	$(BIN)/python -m pytest -q tests

# On a GPU machine: the gpu tests and the GPU benchmarks, JSON lines into gpu-check/gpu-check.jsonl (scripts/gpu_check.sh)
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bash scripts/gpu_check.sh
