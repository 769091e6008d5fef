"""Dagster definitions of the reference product-analytics pipeline (`dagster dev` loads this file)."""

import dagster as dg

import backfill_assets as bfa
from product_analytics import resources
from product_analytics.tables import build_assets

defs = dg.Definitions(
    assets=build_assets(),
    jobs=[bfa.branch_job()],  # approve, publish, discard or undo a backfill's branch from the UI
    resources=resources(),
    # One process per run: each step in its own process costs ~2 s here, and DuckDB has one writer anyway.
    executor=dg.in_process_executor,
)
