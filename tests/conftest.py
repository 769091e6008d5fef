"""Shared fixtures: warehouses live under pytest's tmp_path; the demo source runs small."""

import gc
import json
import os
import shutil

import dagster as dg
import duckdb
import pytest

import backfill_assets as bfa
from product_analytics.tables import build_assets

DAILY = ["raw_events", "events_clean", "sessions", "daily_active_users", "funnel_daily", "revenue_daily"]
TEST_EVENTS_PER_DAY = "300"


@pytest.fixture(autouse=True)
def _small_demo_source(monkeypatch):
    monkeypatch.setenv("BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY", TEST_EVENTS_PER_DAY)


def pytest_unconfigure(config):
    """Remove the garbage-collection callback Hypothesis installs on first use and never removes.

    Python drops gc.callbacks only after its last collection at exit, so everything reachable from that callback's
    module (through pytest's config and the collected tests: Dagster, our assets, DuckDB's Python modules) is freed
    too late to be collected, and DuckDB's binding (nanobind) reports the DuckDB objects among it as "leaked".
    """
    from hypothesis.internal.conjecture import junkdrawer

    for callback in [c for c in gc.callbacks if getattr(c, "__module__", None) == junkdrawer.__name__]:
        gc.callbacks.remove(callback)
    junkdrawer._gc_initialized = False  # a later Hypothesis run in this process installs it again


def report(kind: str, **figures) -> None:
    """Append one JSON line of figures to $BACKFILL_ASSETS_RELIABILITY_REPORT (make reliability reads it)."""
    path = os.environ.get("BACKFILL_ASSETS_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, **figures}) + "\n")


def make_defs(db_path, assets=None) -> dg.Definitions:
    return dg.Definitions(
        assets=assets if assets is not None else build_assets(),
        resources={"warehouse": bfa.Warehouse(database=str(db_path))},
        executor=dg.in_process_executor,
    )


def run_range(defs, keys, start, end, **kw) -> dg.ExecuteInProcessResult:
    """One ranged run of `keys` over partitions start..end (inclusive), as `dagster asset materialize` does."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[dg.AssetKey(k) for k in keys],
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
        raise_on_error=False,
        **kw,
    )


def check_evaluations(result) -> dict[tuple[str, str], bool]:
    return {
        (
            e.event_specific_data.asset_key.to_user_string(),
            e.event_specific_data.check_name,
        ): e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def step_failures(result) -> list[str]:
    """Each failed step's message: a held check's description, or the exception the step raised."""
    errors = [e.event_specific_data.error for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return [(error.cause or error).message for error in errors]


def published(db_path, asset) -> dict[str, tuple[int, int, str]]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return bfa.published_partitions(con, asset)
    finally:
        con.close()


@pytest.fixture(scope="session")
def january_run(tmp_path_factory):
    """The daily reference assets published for January 2025 in one ranged run (built once):
    (warehouse path, run result)."""
    path = tmp_path_factory.mktemp("january") / "warehouse.duckdb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY", TEST_EVENTS_PER_DAY)
        result = run_range(make_defs(path), DAILY, "2025-01-01", "2025-01-31")
    assert result.success, step_failures(result)
    return path, result


@pytest.fixture(scope="session")
def january_db(january_run):
    return january_run[0]


@pytest.fixture
def january(january_db, tmp_path):
    """A private copy of the January warehouse for one test to change."""
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(january_db, path)
    return path
