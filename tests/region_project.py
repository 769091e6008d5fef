"""A small project of a user's own for tests/test_partition_schemes*.py: orders by day x region (static
regions), each region's total, clicks per hour, and visits by New York's days.
The generation the transform writes is read from the file named by
$REGION_PROJECT_GENERATION when a run starts (1 without it), so a test can change what a backfill produces."""

import os
from pathlib import Path

import dagster as dg

import backfill_assets as bfa

REGIONS = dg.StaticPartitionsDefinition(["apac", "eu", "us"])
DAYS = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-02-01")
DAY_X_REGION = dg.MultiPartitionsDefinition({"date": DAYS, "region": REGIONS})
# Three rows per day and region: amount = generation * 10 + i.
ORDERS_SQL = """
SELECT d::DATE AS day, region, strftime(d, '%Y%m%d') || '-' || region || '-' || i AS id,
       ($gen * 10 + i)::DECIMAL(18, 2) AS amount
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), unnest($keys::VARCHAR[]) k(region), range(3) t(i)
"""


def generation() -> dict:
    path = os.environ.get("REGION_PROJECT_GENERATION")
    return {"gen": int(Path(path).read_text()) if path and Path(path).exists() else 1}


ORDERS = bfa.TableSpec(
    name="orders", partitions=DAY_X_REGION, partition_column={"date": "day", "region": "region"}, grain=["id"],
    columns={}, code_version="1", metrics={"amount": "sum(amount)"}, max_row_change=1.0,
)  # fmt: skip
REGION_TOTALS = bfa.TableSpec(
    name="region_totals", partitions=REGIONS, partition_column="region", grain=["region"], columns={},
    code_version="1", consumers=[bfa.Consumer("Regional sales board", owners=["sales@example.com"])],
)  # fmt: skip
orders = bfa.derived_asset(ORDERS, ORDERS_SQL, params=generation)
region_totals = bfa.derived_asset(
    REGION_TOTALS,
    "SELECT region, sum(amount) AS amount, count(DISTINCT day) AS days FROM orders "
    "WHERE region IN (SELECT unnest($keys::VARCHAR[])) GROUP BY ALL",
    deps=[dg.AssetDep("orders", partition_mapping=dg.MultiToSingleDimensionPartitionMapping("region"))],
)
# Clicks per hour (UTC): two rows an hour, n = generation * 100 + i.
CLICKS = bfa.TableSpec(
    name="clicks_hourly", partitions=dg.HourlyPartitionsDefinition("2025-01-01-00:00", end_date="2025-01-08-00:00"),
    partition_column="hour", grain=["id"], columns={}, code_version="1", metrics={"clicks": "sum(n)"},
    max_row_change=1.0,
)  # fmt: skip
clicks_hourly = bfa.derived_asset(
    CLICKS,
    "SELECT h AS hour, strftime(h, '%Y%m%d%H') || '-' || i AS id, $gen * 100 + i AS n "
    "FROM range($start::TIMESTAMPTZ, $end::TIMESTAMPTZ, INTERVAL 1 HOUR) r(h), range(2) t(i)",
    params=generation,
)
# Visits by day in New York (clocks go forward on 2025-03-09, a day of 23 hours): one every 5 hours from
# 2025-03-01 00:00 UTC, n = generation * 100 + the visit's number. `day` is the instant the visit's local day
# starts; a run keeps the visits of its days.
VISITS = bfa.TableSpec(
    name="visits_ny", partitions=dg.DailyPartitionsDefinition("2025-03-01", end_date="2025-03-16",
    timezone="America/New_York"), partition_column="day", grain=["id"],
    columns={"day": bfa.Column("TIMESTAMPTZ", nullable=False), "id": bfa.Column("VARCHAR", nullable=False),
             "ts": bfa.Column("TIMESTAMPTZ", nullable=False), "n": bfa.Column("BIGINT")},
    code_version="1", metrics={"n": "sum(n)"}, max_row_change=1.0,
)  # fmt: skip
visits_ny = bfa.derived_asset(
    VISITS,
    """
    SELECT timezone('America/New_York', date_trunc('day', timezone('America/New_York', ts))) AS day,
           i::VARCHAR AS id, ts, $gen * 100 + i AS n
    FROM (SELECT TIMESTAMPTZ '2025-03-01 00:00:00+00' + i * INTERVAL 5 HOUR AS ts, i FROM range(80) t(i))
    WHERE ts >= $start AND ts < $end
    """,
    params=generation,
)
defs = dg.Definitions(
    assets=[orders, region_totals, clicks_hourly, visits_ny, *bfa.consumer_specs([ORDERS, REGION_TOTALS])],
    resources={"warehouse": bfa.Warehouse()},
    executor=dg.in_process_executor,
)
