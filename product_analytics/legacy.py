"""The pipeline as it was before the refunds fix: revenue_daily and revenue_by_region at code version 1.

Version 1 of both did not join refund events, so refunds were undercounted (zero) and net revenue equalled
gross revenue. `make dev` seeds the demo warehouse with these definitions, so the shipped code (version 2)
shows the old partitions as stale, and `backfills/refunds-fix-2025q1.yaml` (revenue_daily) and
`backfills/emea-refunds-2025-01.yaml` (revenue_by_region, EMEA in January only) repair them:

    backfill-assets materialize -f product_analytics/legacy.py --from 2025-01-01 --to 2025-03-31
"""

import dataclasses

import dagster as dg

import backfill_assets as bfa
from product_analytics import resources, tables

LEGACY_REVENUE_DAILY_SQL = """
SELECT event_date AS revenue_date,
       currency,
       count(*) AS purchases,
       0::BIGINT AS refunds,
       sum(amount_usd)::DECIMAL(18, 2) AS gross_revenue_usd,
       0::DECIMAL(18, 2) AS refunds_usd,
       sum(amount_usd)::DECIMAL(18, 2) AS net_revenue_usd
FROM events_clean
WHERE event_date >= $start AND event_date < $end AND event_type = 'purchase'
GROUP BY 1, 2
"""

LEGACY_REVENUE_BY_REGION_SQL = tables.revenue_by_region_sql(counted=("purchase",))  # refunds not read

legacy_revenue_daily_spec = dataclasses.replace(
    tables.revenue_daily_spec,
    code_version="1",
    rules=[
        bfa.Reconcile(
            "net_is_purchases",
            "net_revenue_usd",
            "SELECT event_date, sum(amount_usd) FROM events_clean WHERE event_date >= $start AND event_date < $end "
            "AND event_type = 'purchase' GROUP BY 1",
            description="Net revenue equals purchases (version 1 did not look at refunds).",
        ),
    ],
)

legacy_revenue_by_region_spec = dataclasses.replace(tables.revenue_by_region_spec, code_version="1", rules=[])


def build_legacy_assets() -> list:
    legacy = {
        a.key: a
        for a in (
            bfa.derived_asset(legacy_revenue_daily_spec, LEGACY_REVENUE_DAILY_SQL, deps=["events_clean"]),
            bfa.derived_asset(legacy_revenue_by_region_spec, LEGACY_REVENUE_BY_REGION_SQL, deps=["events_clean"]),
        )
    }
    return [legacy.get(getattr(a, "key", None), a) for a in tables.build_assets()]


defs = dg.Definitions(
    assets=build_legacy_assets(),
    resources=resources(),
    executor=dg.in_process_executor,
)
