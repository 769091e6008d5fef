# The two commands of a fresh machine: `make dev` (the reference pipeline in Dagster's UI, with
# demo data) and `make test` (lint + the whole test suite). Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export BACKFILL_ASSETS_DB ?= $(CURDIR)/data/warehouse.duckdb
DEMO_FROM ?= 2025-01-01
DEMO_TO ?= 2025-03-31
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: dev test seed lint clean bench bench-plan reliability

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: instance/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp instance/dagster.yaml $@

# The demo history is built by the code as it was before the refunds fix (product_analytics/legacy.py),
# so `backfill-assets plan --stale` and backfills/refunds-fix-2025q1.yaml have something to repair.
seed: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/backfill-assets materialize -f product_analytics/legacy.py --from $(DEMO_FROM) --to $(DEMO_TO) --only-missing

dev: seed
	$(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

# Not part of `make test` (about 45 minutes at 100k events/day); tests/test_bench.py runs its --smoke mode.
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench.py

# 50 SIGKILLs, 300 state-machine histories and the bad-input corpus, then a report (about 9 minutes).
reliability: $(BIN)/.installed
	$(BIN)/python scripts/reliability.py

bench-plan: $(BIN)/.installed
	$(BIN)/python benchmarks/plan_bench.py

clean:
	rm -rf $(VENV) .dagster_home data .pytest_cache .ruff_cache
