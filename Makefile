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
REGISTRY ?= us-docker.pkg.dev/my-project/mobiletag
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := $(REGISTRY)/mobiletag:$(VERSION)
export MOBILETAG_REGISTRY := $(REGISTRY)

.PHONY: install demo test test-fast lint bench compile images upload schedule clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mobiletag sample-data --out-dir $(DEMO_DIR)/data --images 1000
	$(BIN)/mobiletag validate --data-dir $(DEMO_DIR)/data --config configs/fast.yaml
	$(BIN)/mobiletag train --data-dir $(DEMO_DIR)/data --config configs/fast.yaml --out-dir $(DEMO_DIR)/output

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests components pipeline.py bench
	$(BIN)/ruff format --check src tests components pipeline.py bench
	$(BIN)/mypy src

# pipeline.yaml beside pipeline.py (what `kfp dsl compile --py pipeline.py` gives too)
compile: $(STAMP)
	$(BIN)/python pipeline.py

# Build and push the component image (needs a Docker engine; tag = package version)
images: compile
	docker build -f images/Dockerfile -t $(IMAGE) .
	docker push $(IMAGE)

# Upload the compiled pipeline to KFP (KF_PIPELINES_ENDPOINT, or in-cluster)
upload: compile
	$(BIN)/mobiletag upload --package pipeline.yaml

# Weekly retraining with a Kubernetes CronJob in your profile namespace
schedule:
	kubectl apply -k manifests/

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(DEMO_DIR) pipeline.yaml .pytest_cache .mypy_cache .ruff_cache
