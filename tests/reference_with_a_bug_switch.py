"""The reference pipeline with one switch, for tests/test_dagster_dev.py: while the file named by
$BACKFILL_ASSETS_MONTHLY_BUG exists, monthly_revenue's transform adds one cent to every month's net revenue (a bug
in a backfill's downstream table), so its `reconciled` check against revenue_daily fails. Otherwise it is the
reference pipeline, table for table."""

import os
from pathlib import Path

import dagster as dg

import backfill_assets as bfa
import definitions
from product_analytics.tables import MONTHLY_REVENUE_SQL, monthly_revenue_spec

BUGGY_SQL = MONTHLY_REVENUE_SQL.replace("sum(net_revenue_usd)::", "(sum(net_revenue_usd) + $bug)::")
assert BUGGY_SQL != MONTHLY_REVENUE_SQL


def _bug() -> dict:
    switch = os.environ.get("BACKFILL_ASSETS_MONTHLY_BUG")
    return {"bug": 0.01 if switch and Path(switch).exists() else 0}


monthly = bfa.derived_asset(monthly_revenue_spec, BUGGY_SQL, deps=["revenue_daily"], params=_bug)
defs = dg.Definitions(  # the reference's (only one Definitions may be named at module scope)
    assets=[a for a in definitions.defs.assets if getattr(a, "key", None) != monthly.key] + [monthly],
    jobs=definitions.defs.jobs,
    resources=definitions.defs.resources,
    executor=definitions.defs.executor,
)
