# Two entry points: `make repro` (the pipeline on the defaults) and `make test`. Both idempotent.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Two torch processes on 2 cores slow each other down when OpenMP threads spin (DESIGN.md).
export OMP_WAIT_POLICY ?= PASSIVE
export MLFLOW_DISABLE_TELEMETRY ?= true
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install repro test ui clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

ui: $(STAMP)
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

clean-venv:
	rm -rf $(VENV)
