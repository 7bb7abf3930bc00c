# nnops: `make help` lists the targets.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Test workers (pytest-xdist): a test module runs on one worker, so its fixtures are built once.
# `make test` and `make test-unit` run two (WORKERS=1: one process, e.g. to debug a failure).
WORKERS ?= 2
xdist = $(if $(filter 0 1,$(1)),,-n $(1) --dist loadscope)
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run test test-unit lint format ui server serve bench clean team-up team-down

help:  ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (nnops needs Python 3.11 or 3.12: PY=python3.12 make setup)" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create the virtualenv and install pinned requirements

run: setup  ## set up and run the whole pipeline (dvc repro) on the embedded default data
	. $(BIN)/activate && dvc repro

test: setup  ## set up and run the whole test suite (unit, pipeline, e2e) on two processes (WORKERS=1: one)
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_postgres.sh
	. $(BIN)/activate && pytest $(call xdist,$(WORKERS))

test-unit: setup  ## run only the fast unit tests, on two processes
	. $(BIN)/activate && pytest $(call xdist,2) tests/unit

lint: setup  ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup  ## format the code with ruff
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

ui: setup  ## open the MLflow UI on 127.0.0.1:5000 against the project's store (PORT=5000)
	. $(BIN)/activate && python -m nnops.ui ui --port $(or $(PORT),5000)

server: setup  ## start a team MLflow tracking server on 127.0.0.1:5000 (sqlite + artifacts in mlserver/)
	. $(BIN)/activate && python -m nnops.ui server --port $(or $(PORT),5000)

team-up: setup  ## team mode: PostgreSQL + MLflow server with sign-in on 127.0.0.1:5000; writes mlserver/team.env
	. $(BIN)/activate && python -m nnops.team up --port $(or $(PORT),5000)

team-down:  ## stop the server and PostgreSQL that team-up started
	. $(BIN)/activate && python -m nnops.team down

serve: setup  ## serve models:/<register.model_name>@champion on 127.0.0.1:5001 (PORT=5001)
	. $(BIN)/activate && export MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" && \
	mlflow models serve -m "models:/$$(python -c 'from nnops.config import load_params; print(load_params().registry.model_name)')@champion" \
	  --env-manager local -h 127.0.0.1 -p $(or $(PORT),5001)

bench: setup  ## run the benchmarks in bench/
	. $(BIN)/activate && for b in bench/*.py; do python $$b; done

clean:  ## remove the virtualenv and caches (keeps data, models and the MLflow store)
	rm -rf $(VENV) .pytest_cache .ruff_cache
