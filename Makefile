# mobiletag: the one entry point for people and CI.
# `make demo` and `make test` install what they need into .venv first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mobiletag sample-data --out-dir $(DEMO_DIR)/data --images 600
	$(BIN)/mobiletag validate --data-dir $(DEMO_DIR)/data --config configs/fast.yaml
	$(BIN)/mobiletag prepare --data-dir $(DEMO_DIR)/data --config configs/fast.yaml --out-dir $(DEMO_DIR)/tfrecords

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(DEMO_DIR) bench/results.json .pytest_cache .mypy_cache .ruff_cache
