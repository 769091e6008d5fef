"""Date x region partitions on a real `dagster dev`, with a project of a user's own (tests/region_project.py):
backfills launched through Dagster's backfill API (what the UI's launch dialog calls), the runs Dagster makes
of them, what consumers read after each, and a static partition rolled back alone with the CLI. Expected
values come from the project's formula (amount = generation * 10 + i, three rows per day and region) and hashes
are computed in SQL over the consumers' views. Last, a daily table in New York's days, launched the same way."""

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import dagster_helpers as helpers
import duckdb
import pytest
from test_dagster_dev import LAUNCH

pytestmark = pytest.mark.slow

JANUARY = [f"2025-01-{d:02d}" for d in range(1, 32)]
REGIONS = ["apac", "eu", "us"]


def backfill(url: str, asset: str, names: list[str]) -> list[dict]:
    """Backfill `names` of `asset` as the UI's partition dialog does; its runs once it completed."""
    params = {"title": f"{asset} x {len(names)}", "partitionNames": names, "assetSelection": [{"path": [asset]}]}
    launched = helpers.graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    done = helpers.wait_for_backfill(url, launched["backfillId"])
    assert done["status"] == "COMPLETED_SUCCESS", done
    assert all(r["status"] == "SUCCESS" for r in done["runs"]), done["runs"]
    return done["runs"]


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def read(db, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def day_region_hashes(db) -> dict[tuple[str, str], int]:
    return {
        (d, r): h for d, r, h in read(db, "SELECT day::VARCHAR, region, sum(hash(o)) FROM main.orders o GROUP BY 1, 2")
    }


def per_day(gen: int) -> Decimal:
    return Decimal(sum(gen * 10 + i for i in range(3)))


def test_a_january_backfill_of_eu_changes_eu_only_in_one_run_and_a_region_rolls_back_alone(tmp_path):
    generation = tmp_path / "generation"
    env = {**helpers.dagster_env(tmp_path), "REGION_PROJECT_GENERATION": str(generation)}
    command = (str(helpers.BIN / "dagster"), "dev", "-f", "tests/region_project.py")
    with helpers.dagster_dev(tmp_path, env, command=command) as dev:
        runs = backfill(dev.url, "orders", [f"{d}|{r}" for d in JANUARY for r in REGIONS])
        # Dagster 1.13 makes one run per region of a date range x regions backfill (single-run backfill policy)
        ranges = sorted(
            (tag(r, "dagster/asset_partition_range_start"), tag(r, "dagster/asset_partition_range_end")) for r in runs
        )
        assert ranges == [(f"2025-01-01|{r}", f"2025-01-31|{r}") for r in REGIONS]
        before = day_region_hashes(dev.db)
        assert len(before) == 93
        assert read(dev.db, "SELECT region, sum(amount) FROM main.orders GROUP BY 1 ORDER BY 1") == [
            (r, 31 * per_day(1)) for r in REGIONS
        ]
        assert len(backfill(dev.url, "region_totals", REGIONS)) == 1  # static keys alone: one run

        generation.write_text("2")
        runs = backfill(dev.url, "orders", [f"{d}|eu" for d in JANUARY])
        assert len(runs) == 1  # the whole of January for eu in one run
        after = day_region_hashes(dev.db)
        assert {k for k in before if before[k] != after[k]} == {(d, "eu") for d in JANUARY}
        backfill(dev.url, "region_totals", ["eu"])
        assert read(dev.db, "SELECT region, amount, days FROM main.region_totals ORDER BY 1") == [
            ("apac", 31 * per_day(1), 31), ("eu", 31 * per_day(2), 31), ("us", 31 * per_day(1), 31),
        ]  # fmt: skip

        printed = helpers.run_cli(
            dev.env, "rollback", "region_totals", "-f", "tests/region_project.py", "--partition", "eu", "--reason", "t"
        )
        assert "region_totals: rolled back 1 partition" in printed
        assert read(dev.db, "SELECT region, amount FROM main.region_totals ORDER BY 1") == [
            (r, 31 * per_day(1)) for r in REGIONS
        ]
        assert day_region_hashes(dev.db) == after  # orders untouched

        # a daily table in New York's days, over the weekend its clocks went forward: each visit in its local
        # day by zoneinfo (the project's visits: one every 5 hours from 2025-03-01 00:00 UTC, n = 200 + i)
        new_york, days = ZoneInfo("America/New_York"), ["2025-03-08", "2025-03-09", "2025-03-10"]
        assert len(backfill(dev.url, "visits_ny", days)) == 1
        visits = [(dt.datetime(2025, 3, 1, tzinfo=dt.UTC) + dt.timedelta(hours=5 * i), 200 + i) for i in range(80)]
        kept = [(at, n) for at, n in visits if at.astimezone(new_york).date().isoformat() in days]
        rows = read(dev.db, "SELECT day, ts, n FROM main.visits_ny ORDER BY ts")
        assert [(d.astimezone(new_york).date(), d.astimezone(new_york).time(), at, n) for d, at, n in rows] == [
            (at.astimezone(new_york).date(), dt.time(), at, n) for at, n in kept
        ]
