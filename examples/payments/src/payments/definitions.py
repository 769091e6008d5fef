"""The project's Definitions: every table in defs/ (YAML components and Python modules), one warehouse."""

import os
from pathlib import Path

import dagster as dg

import backfill_assets as bfa


@dg.definitions
def defs() -> dg.Definitions:
    warehouse = bfa.Warehouse(database=os.environ.get("PAYMENTS_DB", "payments.duckdb"))
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources={"warehouse": warehouse}, executor=dg.in_process_executor),
    )
