"""Dagster definitions of the reference product-analytics pipeline (`dagster dev` loads this file)."""

import os
from pathlib import Path

import dagster as dg

import backfill_assets as bfa
from product_analytics.tables import build_assets

DB_PATH = os.environ.get("BACKFILL_ASSETS_DB", str(Path(__file__).parent / "data" / "warehouse.duckdb"))

defs = dg.Definitions(
    assets=build_assets(),
    resources={"warehouse": bfa.Warehouse(database=DB_PATH)},
    # One process per run: each step in its own process costs ~2 s here, and DuckDB has one writer anyway.
    executor=dg.in_process_executor,
)
