# USE — two commands do all the set-up: `make repro` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := .cache/models

# Offline and quiet (see ../shared/STACK.md)
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv assets repro test lint typecheck pytest bench clean

help:
	@echo "make repro  - create .venv, fetch offline assets, run the DVC pipeline (demo profile)"
	@echo "make test   - create/update .venv and run lint, type checks and the test suite"
	@echo "make bench  - run the performance benchmarks (writes benchmarks/results.json)"

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

assets: venv
	$(PY) -m use_core.pretrained.assets --cache-dir $(CACHE)

repro: assets
	@test -d .dvc || $(VENV)/bin/dvc init --quiet
	$(VENV)/bin/dvc repro

lint: venv
	$(VENV)/bin/ruff check use_core flows tests benchmarks
	$(VENV)/bin/ruff format --check use_core flows tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv
	$(VENV)/bin/mypy use_core

pytest: assets
	$(PY) -m pytest -q tests

test: lint typecheck pytest

bench: assets
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
