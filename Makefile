# make demo: fresh .venv, install, run the main job on its embedded default.
# make test: fresh .venv, install with test-only references, lint (ruff check and format, mypy on
#            fluojax/), then the test suite on 2 workers (one per CI core; tests sharing an
#            expensive fixture are grouped on one worker).
# make lint: only the ruff and mypy checks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/fluojax demo -o demo_out --overwrite

lint: $(STAMP)
	$(BIN)/ruff check fluojax tests experiments
	$(BIN)/ruff format --check fluojax tests experiments
	$(BIN)/mypy

test: lint
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(BIN)/python experiments/bench_fcs.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache
