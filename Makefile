# Two entry points: `make repro` (the pipeline on the defaults) and `make test`. Both idempotent.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Two torch processes on 2 cores can slow each other down eightfold when OpenMP threads spin
# (docs/getting-started.md, "Machine notes").
export OMP_WAIT_POLICY ?= PASSIVE
export MLFLOW_DISABLE_TELEMETRY ?= true
export TOKENIZERS_PARALLELISM ?= false

# `make server`: the team's MLflow tracking server (docs/team.md). Its own store, not ./mlflow.db:
# runs logged through it keep their artifacts behind its proxy, so every client can read them.
SERVER_STORE ?= sqlite:///mlflow-server.db
SERVER_ARTIFACTS ?= mlartifacts-server
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000

.PHONY: install repro test ui server push pull docs clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# check-params first: `dvc repro` deletes a changed stage's outputs before the stage can refuse a bad value.
repro: $(STAMP)
	genrec check-params && dvc repro

test: $(STAMP)
	pytest

ui: $(STAMP)
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

server: $(STAMP)
	mlflow server --backend-store-uri $(SERVER_STORE) --artifacts-destination $(SERVER_ARTIFACTS) \
		--host $(SERVER_HOST) --port $(SERVER_PORT) --workers 1

# Data, models and reports to and from the DVC remote (`dvc remote add -d ...`, docs/team.md).
# pull --allow-missing: fetch what the remote has; outputs nobody produced or pushed yet are listed as
# warnings instead of failing the whole pull, and `dvc status` then names the stages to run.
# DVC_TARGETS: stages or outputs to move (default: all), e.g. `make push DVC_TARGETS=train`.
DVC_TARGETS ?=
push: $(STAMP)
	dvc push $(DVC_TARGETS)

pull: $(STAMP)
	dvc pull --allow-missing $(DVC_TARGETS)

# The documentation site (mkdocs-material, mkdocs.yml) into site/; --strict fails on a broken link or anchor.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
