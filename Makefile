# The two commands of a fresh machine: `make dev` (the reference pipeline in Dagster's UI, with
# demo data) and `make test` (lint + the whole test suite). Both create .venv when needed; `make test`
# also installs Debian's Chromium for tests/test_e2e.py when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export BACKFILL_ASSETS_DB ?= $(CURDIR)/data/warehouse.duckdb
DEMO_FROM ?= 2025-01-01
DEMO_TO ?= 2025-03-31
DEMO_HOURLY_FROM ?= 2025-03-25
HOST ?= 127.0.0.1
PORT ?= 3000
# tests/test_e2e.py drives this browser; Playwright cannot download its own here.
CHROMIUM := $(or $(BACKFILL_ASSETS_CHROMIUM),/usr/bin/chromium)

.PHONY: dev test seed instance lint clean bench bench-plan reliability chromium

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The shipped instance config (backfill_assets/dagster.yaml) and the duckdb pool's limit of one writer.
instance: $(BIN)/.installed
	$(BIN)/backfill-assets init-instance

# The demo history is built by the code as it was before the refunds fix (product_analytics/legacy.py),
# so `backfill-assets plan --stale` and the briefs in backfills/ have something to repair. The hourly table
# gets the last week only: 24 partitions a day cost Dagster's event log about 1 s a day.
seed: $(BIN)/.installed instance
	$(BIN)/backfill-assets materialize -f product_analytics/legacy.py --from $(DEMO_FROM) --to $(DEMO_TO) --only-missing --select 'not key:events_hourly'
	$(BIN)/backfill-assets materialize -f product_analytics/legacy.py --from $(DEMO_HOURLY_FROM) --to $(DEMO_TO) --only-missing --select key:events_hourly

dev: seed
	$(BIN)/dg dev -h $(HOST) -p $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: $(CHROMIUM) lint
	$(BIN)/pytest

# Only when the browser is missing: as root, Debian's `chromium` from apt; otherwise stop before the
# 13-minute run with the one command to type.
chromium: $(CHROMIUM)
$(CHROMIUM):
	@[ "$$(id -u)" = 0 ] || { echo "make test needs Chromium at $@ for tests/test_e2e.py: run 'sudo apt-get install chromium' (or set BACKFILL_ASSETS_CHROMIUM)" >&2; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
	@test -x $@ || { echo "apt-get installed chromium but there is no $@; set BACKFILL_ASSETS_CHROMIUM to its path" >&2; exit 1; }

# Not part of `make test` (about 50 minutes at 100k events/day, plus about 40 for the branch measurements;
# `python benchmarks/bench.py --only branch` runs those alone), then the partition-count series (a few
# minutes); tests/test_bench.py runs the --smoke mode of both.
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/partition_bench.py

# 50 SIGKILLs, 300 state-machine histories and the bad-input corpus, then a report (about 9 minutes).
reliability: $(BIN)/.installed
	$(BIN)/python scripts/reliability.py

bench-plan: $(BIN)/.installed
	$(BIN)/python benchmarks/plan_bench.py

clean:
	rm -rf $(VENV) .dagster_home data .pytest_cache .ruff_cache
