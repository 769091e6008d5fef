"""The reference product-analytics pipeline: a user of backfill_assets' public API."""

import os
from pathlib import Path

import backfill_assets as bfa


def resources() -> dict:
    """The pipeline's resources: the warehouse at $BACKFILL_ASSETS_DB, else data/warehouse.duckdb in the repo."""
    default = Path(__file__).resolve().parents[1] / "data" / "warehouse.duckdb"
    return {"warehouse": bfa.Warehouse(database=os.environ.get("BACKFILL_ASSETS_DB", str(default)))}
