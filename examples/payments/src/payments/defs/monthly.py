"""Net revenue per country and month, computed in pandas (a DataFrame transform), and a plain leaderboard."""

import dagster as dg
import pandas as pd

import backfill_assets as bfa

monthly_spec = bfa.TableSpec(
    name="countries_monthly",
    description="Net revenue (gross minus fees) per country and month, from payments_daily.",
    partitions=dg.MonthlyPartitionsDefinition(start_date="2025-01-01", end_date="2025-04-01"),
    partition_column="month",
    grain=["month", "country"],
    columns={
        "month": bfa.Column("DATE", nullable=False),
        "country": bfa.Column("VARCHAR", nullable=False),
        "net_revenue": bfa.Column("DECIMAL(18,2)", "gross minus fees, to the cent", nullable=False),
    },
    metrics={"net_revenue": "sum(net_revenue)"},
    rules=[
        bfa.Reconcile(
            "net_matches_daily",
            "net_revenue",
            "SELECT date_trunc('month', day)::DATE, sum(gross - fees) FROM payments_daily "
            "WHERE day >= $start AND day < $end GROUP BY 1",
            description="A month's net revenue equals its days' gross minus fees.",
        )
    ],
    code_version="1",
    owners=["team:finance"],
    group="payments",
)


def net_revenue(ctx: bfa.TransformContext) -> pd.DataFrame:
    """pandas reads DECIMAL as float64; the declared DECIMAL(18,2) is applied when the frame is read back in."""
    daily = ctx.sql("SELECT day, country, gross, fees FROM payments_daily WHERE day >= $start AND day < $end").df()
    daily["month"] = daily["day"].dt.to_period("M").dt.start_time.dt.date
    daily["net_revenue"] = daily["gross"] - daily["fees"]
    return daily.groupby(["month", "country"], as_index=False)["net_revenue"].sum()


countries_monthly = bfa.derived_asset(monthly_spec, net_revenue, deps=["payments_daily"])


@dg.asset(deps=[countries_monthly], pool=bfa.POOL, group_name="payments", required_resource_keys={"warehouse"})
def country_leaderboard(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """A plain (unpartitioned) asset downstream of the derived tables: countries by net revenue, all months."""
    with context.resources.warehouse.get_connection() as con:
        con.execute(
            "CREATE OR REPLACE TABLE country_leaderboard AS SELECT country, sum(net_revenue) AS net_revenue "
            "FROM countries_monthly GROUP BY 1 ORDER BY 2 DESC"
        )
        rows = con.execute("SELECT count(*) FROM country_leaderboard").fetchone()[0]
    return dg.MaterializeResult(metadata={"dagster/row_count": rows})
