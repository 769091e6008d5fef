"""Partitions other than days, straight through the library: static (regions, tenants), date x region
multi-partitions, hourly and a daily definition in a time zone. Expected values come from each test's own
model of which generation each partition holds, and hashes are computed in SQL over the consumers' views."""

import argparse
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pytest
import yaml

import backfill_assets as bfa
from backfill_assets import Column, Reconcile, TableSpec, briefs, cli, history, launch, published_partitions
from backfill_assets import warehouse as wh
from backfill_assets.publish import write_audit_publish

REGIONS = dg.StaticPartitionsDefinition(["apac", "eu", "us"])
JANUARY = [f"2025-01-{d:02d}" for d in range(1, 32)]
DATE_X_REGION = dg.MultiPartitionsDefinition(
    {"date": dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-02-01"), "region": REGIONS}
)


@pytest.fixture
def con(tmp_path):
    c = wh.connect(str(tmp_path / "w.duckdb"))
    yield c
    c.close()


def run(con, spec, sql, keys, gen, outcome="publish"):
    report = write_audit_publish(con, spec, sql, keys, run_id=f"{spec.name}-{gen}-{keys[0]}", params={"gen": gen})
    assert report.outcome == outcome, report.failure_message()
    return report


def hashes(con, table, by):
    """(partition -> hash of its rows) over the consumers' view, in SQL: an independent fingerprint."""
    return dict(con.execute(f"SELECT {by}, sum(hash(r)) FROM main.{table} r GROUP BY 1").fetchall())


# Three rows per region: amount = gen * 100 + i; a run writes the regions it is bound ($keys).
REGION_SQL = """
SELECT region, region || '-' || i AS id, ($gen * 100 + i)::DECIMAL(18, 2) AS amount
FROM unnest($keys::VARCHAR[]) k(region), range(3) t(i)
"""


def region_spec(**overrides):
    fields = dict(
        name="by_region", partitions=REGIONS, partition_column="region", grain=["id"], columns={},
        code_version="1", metrics={"total": "sum(amount)"}, max_row_change=10.0,
    )  # fmt: skip
    return TableSpec(**{**fields, **overrides})


def test_a_static_partition_publishes_and_rolls_back_alone(con):
    spec, model = region_spec(), {}

    def expected():
        return {r: Decimal(sum(g * 100 + i for i in range(3))) for r, g in model.items()}

    run(con, spec, REGION_SQL, ["apac", "eu", "us"], 1)
    model.update(apac=1, eu=1, us=1)
    before = hashes(con, "by_region", "region")
    run(con, spec, REGION_SQL, ["eu"], 2)
    model["eu"] = 2
    totals = dict(con.execute("SELECT region, sum(amount) FROM main.by_region GROUP BY 1").fetchall())
    assert totals == expected()
    after = hashes(con, "by_region", "region")
    assert {r: after[r] == before[r] for r in model} == {"apac": True, "eu": False, "us": True}

    history.rollback(con, {"by_region": history.rollback_targets(con, "by_region", ["eu"])}, "bad eu", "me")
    model["eu"] = 1
    assert dict(con.execute("SELECT region, sum(amount) FROM main.by_region GROUP BY 1").fetchall()) == expected()
    assert hashes(con, "by_region", "region") == before


def test_rows_of_a_region_the_run_was_not_asked_for_are_held_as_strays(con):
    spec = region_spec()
    run(con, spec, REGION_SQL, ["eu"], 1)
    leaky = REGION_SQL.replace("unnest($keys::VARCHAR[])", "unnest(['eu', 'us'])")
    report = run(con, spec, leaky, ["eu"], 2, outcome="hold")
    assert "complete" in {o.name for o in report.failed}
    assert dict(con.execute("SELECT region, max(amount) FROM main.by_region GROUP BY 1").fetchall()) == {
        "eu": Decimal(102)
    }


def test_a_static_column_that_is_not_text_is_matched_by_its_text(con):
    tenants = dg.StaticPartitionsDefinition(["7", "42"])
    sql = "SELECT t::INTEGER AS tenant, t || '-' || i AS id, $gen AS n FROM unnest($keys::VARCHAR[]) k(t), range(2)"
    sql += " r(i)"
    spec = region_spec(
        name="by_tenant", partitions=tenants, partition_column="tenant",
        columns={"tenant": Column("INTEGER"), "id": Column("VARCHAR"), "n": Column("INTEGER")}, metrics={},
    )  # fmt: skip
    run(con, spec, sql, ["7", "42"], 1)
    run(con, spec, sql, ["42"], 2)
    assert sorted(con.execute("SELECT tenant, max(n) FROM main.by_tenant GROUP BY 1").fetchall()) == [(7, 1), (42, 2)]
    assert {k: n for k, (_, n, _) in published_partitions(con, "by_tenant").items()} == {"7": 2, "42": 2}


# Two rows per day and region; EU's generation shows in the amount.
DAILY_REGION_SQL = """
SELECT d::DATE AS day, region, strftime(d, '%Y%m%d') || '-' || region || '-' || i AS id,
       ($gen * 1000 + i)::DECIMAL(18, 2) AS amount
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), unnest($keys::VARCHAR[]) k(region), range(2) t(i)
"""


def daily_region_spec(**overrides):
    fields = dict(
        name="revenue_by_region", partitions=DATE_X_REGION, partition_column={"date": "day", "region": "region"},
        grain=["id"], columns={}, code_version="1", metrics={"total": "sum(amount)"}, max_row_change=10.0,
        partitions_per_write=10,
    )  # fmt: skip
    return TableSpec(**{**fields, **overrides})


def keys(days, regions):
    return [str(dg.MultiPartitionKey({"date": d, "region": r})) for d in days for r in regions]


def test_a_date_x_region_backfill_of_eu_over_january_changes_eu_only(con):
    spec = daily_region_spec(
        rules=[Reconcile("matches_formula", "total", """
            SELECT d::DATE, region, 2 * $gen * 1000 + 1 FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d),
                   unnest($keys::VARCHAR[]) k(region)""")],
    )  # fmt: skip
    report = run(con, spec, DAILY_REGION_SQL, keys(JANUARY, ["apac", "eu", "us"]), 1)
    assert len(report.partitions) == 93
    before = hashes(con, "revenue_by_region", "(day, region)")
    eu = keys(JANUARY, ["eu"])
    report = run(con, spec, DAILY_REGION_SQL, eu, 2)
    assert sorted(report.partitions) == sorted(eu)
    after = hashes(con, "revenue_by_region", "(day, region)")
    changed = {(str(day), region) for (day, region), h in after.items() if before[(day, region)] != h}
    assert changed == {(d, "eu") for d in JANUARY}
    totals = con.execute("SELECT region, count(DISTINCT day), sum(amount) FROM main.revenue_by_region GROUP BY 1")
    assert sorted(totals.fetchall()) == [
        ("apac", 31, Decimal(31 * 2001)), ("eu", 31, Decimal(31 * 4001)), ("us", 31, Decimal(31 * 2001)),
    ]  # fmt: skip
    assert report.metrics_after[eu[0]]["total"] == Decimal(4001)  # metrics are kept per multi-partition key


def test_a_date_x_region_reconcile_rule_that_is_off_holds_the_run(con):
    spec = daily_region_spec(
        rules=[Reconcile("off_for_us", "total", """
            SELECT d::DATE, region, 2 * $gen * 1000 + 1 + (region = 'us')::INT
            FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), unnest($keys::VARCHAR[]) k(region)""")],
    )  # fmt: skip
    run(con, spec, DAILY_REGION_SQL, keys(JANUARY[:3], ["eu"]), 1)
    report = run(con, spec, DAILY_REGION_SQL, keys(JANUARY[:3], ["us"]), 1, outcome="hold")
    assert "3 partitions off" in report.failure_message()
    assert con.execute("SELECT DISTINCT region FROM main.revenue_by_region").fetchall() == [("eu",)]


def test_an_hourly_table_publishes_24_distinct_hours_for_one_day(con):
    hourly = dg.HourlyPartitionsDefinition(start_date="2025-03-01-00:00")
    sql = """
    SELECT h AS hour, strftime(h, '%H') || '-' || i AS id, $gen AS n
    FROM range($start::TIMESTAMPTZ, $end::TIMESTAMPTZ, INTERVAL 1 HOUR) r(h), range(2) t(i)
    """
    spec = region_spec(name="hourly", partitions=hourly, partition_column="hour", metrics={})
    day = [f"2025-03-01-{h:02d}:00" for h in range(24)]
    run(con, spec, sql, day, 1)
    rows = con.execute("SELECT count(DISTINCT hour), count(*), min(hour), max(hour) FROM main.hourly").fetchall()[0]
    utc = dt.UTC
    assert rows[:2] == (24, 48)
    assert (rows[2].astimezone(utc), rows[3].astimezone(utc)) == (
        dt.datetime(2025, 3, 1, tzinfo=utc), dt.datetime(2025, 3, 1, 23, tzinfo=utc),
    )  # fmt: skip
    assert len(published_partitions(con, "hourly")) == 24


def test_a_daily_table_in_new_york_gets_each_row_in_its_local_day(con):
    new_york = ZoneInfo("America/New_York")
    daily = dg.DailyPartitionsDefinition(start_date="2025-03-08", timezone="America/New_York")
    events = [dt.datetime(2025, 3, 8, 3, tzinfo=dt.UTC) + dt.timedelta(hours=5 * i) for i in range(16)]
    con.execute("CREATE TABLE raw AS SELECT unnest(?::TIMESTAMPTZ[]) AS ts", [events])
    sql = """
    SELECT $start::DATE AS day, epoch(ts)::VARCHAR AS id, ts FROM raw
    WHERE ts >= timezone('America/New_York', $start::TIMESTAMP) AND ts < timezone('America/New_York', $end::TIMESTAMP)
    """
    spec = region_spec(name="local_days", partitions=daily, partition_column="day", metrics={})
    for key in ["2025-03-08", "2025-03-09", "2025-03-10"]:  # clocks went forward on 2025-03-09
        run(con, spec, sql, [key], 1)
    rows = con.execute("SELECT day, ts FROM main.local_days ORDER BY ts").fetchall()
    inside = [e for e in events if dt.date(2025, 3, 8) <= e.astimezone(new_york).date() <= dt.date(2025, 3, 10)]
    assert [(d, at.astimezone(dt.UTC)) for d, at in rows] == [(e.astimezone(new_york).date(), e) for e in inside]


def test_date_x_region_assets_in_dagster_read_through_identity_and_multi_to_single_dimension_mappings(tmp_path):
    """orders (date x region) -> region_totals (the same, identity) and -> by_region (region only, through
    MultiToSingleDimensionPartitionMapping): each run reads exactly its published upstream partitions, and a
    region whose days are not all published is refused before it computes."""
    days = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-01-04")
    multi = dg.MultiPartitionsDefinition({"date": days, "region": dg.StaticPartitionsDefinition(["eu", "us"])})
    columns = {"date": "day", "region": "region"}
    orders = bfa.derived_asset(
        TableSpec(
            name="orders",
            partitions=multi,
            partition_column=columns,
            grain=["id"],
            columns={},
            code_version="1",
            metrics={"total": "sum(amount)"},
        ),  # fmt: skip
        DAILY_REGION_SQL,
        params={"gen": 1},
    )
    region_totals = bfa.derived_asset(
        TableSpec(
            name="region_totals",
            partitions=multi,
            partition_column=columns,
            grain=["day", "region"],
            columns={},
            code_version="1",
        ),  # fmt: skip
        "SELECT day, region, sum(amount) AS total FROM orders WHERE day >= $start AND day < $end "
        "AND region IN (SELECT unnest($keys::VARCHAR[])) GROUP BY ALL",
        deps=[dg.AssetDep("orders")],
    )
    by_region = bfa.derived_asset(
        TableSpec(
            name="by_region",
            partitions=multi.get_partitions_def_for_dimension("region"),
            partition_column="region",
            grain=["region"],
            columns={},
            code_version="1",
        ),  # fmt: skip
        "SELECT region, sum(amount) AS total, count(DISTINCT day) AS days FROM orders "
        "WHERE region IN (SELECT unnest($keys::VARCHAR[])) GROUP BY ALL",
        deps=[dg.AssetDep("orders", partition_mapping=dg.MultiToSingleDimensionPartitionMapping("region"))],
    )
    db = tmp_path / "w.duckdb"
    defs = dg.Definitions(
        assets=[orders, region_totals, by_region], resources={"warehouse": bfa.Warehouse(database=str(db))},
        executor=dg.in_process_executor,
    )  # fmt: skip
    job = defs.resolve_implicit_global_asset_job_def()

    def materialize(selection, key):
        return job.execute_in_process(
            asset_selection=[dg.AssetKey(a) for a in selection], partition_key=key, raise_on_error=False
        ).success

    for d in ("2025-01-01", "2025-01-02", "2025-01-03"):
        assert materialize(["orders", "region_totals"], dg.MultiPartitionKey({"date": d, "region": "eu"}))
    assert materialize(["by_region"], "eu")
    assert not materialize(["by_region"], "us")  # no day of us is published
    with duckdb.connect(str(db), read_only=True) as con:
        per_day = sum(1000 + i for i in range(2))  # DAILY_REGION_SQL at gen 1: two rows a day and region
        assert con.execute("SELECT region, total, days FROM main.by_region").fetchall() == [
            ("eu", Decimal(3 * per_day), 3)
        ]
        totals = con.execute("SELECT day::VARCHAR, region, total FROM main.region_totals ORDER BY 1").fetchall()
        assert totals == [(d, "eu", Decimal(per_day)) for d in ("2025-01-01", "2025-01-02", "2025-01-03")]


REGION_PROJECT = str(Path(__file__).with_name("region_project.py"))


def test_plan_scopes_a_date_range_and_a_region(tmp_path, monkeypatch, capsys):
    """`plan --where region=eu` with a date range: January x eu of orders, and eu of the region totals that read
    it; a static table alone needs no dates; a region or a name the project does not have is refused in one
    line."""
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "none.duckdb"))

    def plan(*args):
        code = cli.main(["plan", "-f", REGION_PROJECT, "--json", *args])
        out = capsys.readouterr()
        return code, (json.loads(out.out) if code == 0 else out.err)

    code, got = plan("--select", "orders", "--from", "2025-01-01", "--to", "2025-01-31", "--where", "region=eu")
    assert code == 0
    assert {a["asset"]: (a["partitions"], a["partition_count"]) for a in got["assets"]} == {
        "orders": (["2025-01-01|eu..2025-01-31|eu"], 31), "region_totals": (["eu"], 1),
    }  # fmt: skip
    assert [c["name"] for c in got["consumers"]] == ["Regional sales board"]
    code, got = plan("--select", "region_totals", "--where", "region=us,apac")
    assert (code, [a["partitions"] for a in got["assets"]]) == (0, [["apac", "us"]])
    for args, message in [
        (["--select", "orders", "--where", "region=eu"], "orders is partitioned by time: give --from and --to"),
        (["--where", "region=mars"], "no partition mars (there are apac, eu, us)"),
        (["--where", "country=eu"], "no selected asset has a static dimension or column named 'country'"),
        (["--where", "region"], "write NAME=KEY[,KEY...]"),
    ]:
        code, err = plan(*args)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err


def test_materialize_runs_a_date_range_of_each_region_in_one_run(tmp_path, monkeypatch, capsys):
    """`materialize --where`: January x eu is one run of 31 partitions, eu and us two, the region totals one run
    of their regions; what consumers read follows the project's formula (amount = 10 + i, three rows a day)."""
    db = tmp_path / "w.duckdb"
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)

    def materialize(*args):
        assert cli.main(["materialize", "-f", REGION_PROJECT, "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)

    january = ["--from", "2025-01-01", "--to", "2025-01-31"]
    report = materialize("--select", "orders", *january, "--where", "region=eu")
    assert [(r["assets"], r["partitions"], r["range"]) for r in report["runs"]] == [
        (["orders"], 31, "2025-01-01|eu..2025-01-31|eu")
    ]
    report = materialize("--select", "orders", *january, "--where", "region=apac,us")
    assert [(r["partitions"], r["range"]) for r in report["runs"]] == [
        (31, "2025-01-01|apac..2025-01-31|apac"), (31, "2025-01-01|us..2025-01-31|us"),
    ]  # fmt: skip
    report = materialize("--select", "region_totals", "--where", "region=apac,eu,us")
    assert [(r["partitions"], r["range"]) for r in report["runs"]] == [(3, "apac..us")]
    with duckdb.connect(str(db), read_only=True) as con:
        totals = con.execute("SELECT region, amount, days FROM main.region_totals ORDER BY 1").fetchall()
    assert totals == [(r, Decimal(31 * sum(10 + i for i in range(3))), 31) for r in ("apac", "eu", "us")]


EU_BRIEF = {
    "id": "eu-january-fix", "title": "Orders, EU only, January", "reason": "A currency bug in EU orders.",
    "owner": "sales-analytics", "reviewer": "lead@example.com", "risk": "metric-changing repair",
    "scope": {"select": "key:orders", "from": "2025-01-01", "to": "2025-01-31", "where": {"region": "eu"}},
    "write_strategy": "partition_overwrite", "batch_size": 31,
    "expected_changes": [{"asset": "orders", "metric": "amount", "max_relative_change": 0.5}],
    "rollback": "backfill-assets rollback orders --from 2025-01-01 --to 2025-01-31 --where region=eu",
    "stakeholders": ["Regional sales board"],
}  # fmt: skip


def test_a_brief_scoped_to_one_region_plans_and_launches_that_region_only(tmp_path, monkeypatch, capsys):
    """A brief's `where: {region: eu}`: preflight's blast radius is January x eu and eu's total; the backfill it
    launches targets exactly those (per region, as Dagster reads a multi-partition range)."""
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "none.duckdb"))
    path = tmp_path / "eu-january-fix.yaml"
    path.write_text(yaml.safe_dump(EU_BRIEF, sort_keys=False))
    assert cli.main(["preflight", str(path), "-f", REGION_PROJECT]) == cli.EXIT_OK, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "orders over 2025-01-01..2025-01-31 region=eu" in out
    defs = cli.load_definitions(argparse.Namespace(file=REGION_PROJECT, module=None))
    result = briefs.preflight(briefs.load(path), defs)
    params = launch.backfill_params(result.brief, result.plan)
    assert {p["assetKey"]["path"][0]: p["partitions"]["ranges"] for p in params["partitionsByAssets"]} == {
        "orders": [{"start": "2025-01-01|eu", "end": "2025-01-31|eu"}], "region_totals": [{"start": "eu", "end": "eu"}],
    }  # fmt: skip

    bad = {**EU_BRIEF, "scope": {**EU_BRIEF["scope"], "where": {"region": "mars"}}}
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    assert cli.main(["preflight", str(path), "-f", REGION_PROJECT]) != cli.EXIT_OK
    assert "where region: no partition mars" in capsys.readouterr().out


def test_diff_of_a_region_after_its_backfill_names_each_day_and_region(tmp_path, monkeypatch, capsys):
    """`diff orders --where region=eu` over three days after a backfill of generation 2: each partition's amount
    moves from 3 rows of 10+i to 3 rows of 20+i, and every row's amount changed."""
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("REGION_PROJECT_GENERATION", str(tmp_path / "generation"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    days = ["--from", "2025-01-01", "--to", "2025-01-03"]
    assert cli.main(["materialize", "-f", REGION_PROJECT, "--select", "orders", *days, "--where", "region=eu,us"]) == 0
    (tmp_path / "generation").write_text("2")
    assert cli.main(["materialize", "-f", REGION_PROJECT, "--select", "orders", *days, "--where", "region=eu"]) == 0
    capsys.readouterr()
    assert cli.main(["diff", "orders", "-f", REGION_PROJECT, *days, "--where", "region=eu", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    before, after = (Decimal(sum(g * 10 + i for i in range(3))) for g in (1, 2))
    [metric] = got["metrics"]
    moved = {(p["partition"], Decimal(p["before"]), Decimal(p["after"])) for p in metric["partitions"]}
    assert moved == {(f"2025-01-0{d}|eu", before, after) for d in (1, 2, 3)}
    assert (got["diff"]["matched"], got["diff"]["column_match_rates"]["amount"]) == (9, 0.0)


def test_history_of_a_region_lists_that_region_s_versions_only(tmp_path, monkeypatch, capsys):
    """`history orders --where region=eu` over two days, after eu and us were loaded and eu backfilled again:
    each eu day has its two versions, newest first (published, then superseded); us and the third day are not
    listed; a bad scope is refused in one line."""
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "w.duckdb"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    three = ["--from", "2025-01-01", "--to", "2025-01-03"]
    for where in ("region=eu,us", "region=eu"):
        assert cli.main(["materialize", "-f", REGION_PROJECT, "--select", "orders", *three, "--where", where]) == 0
    capsys.readouterr()
    two = ["--from", "2025-01-01", "--to", "2025-01-02"]
    assert cli.main(["history", "orders", "-f", REGION_PROJECT, *two, "--where", "region=eu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["partition"], r["status"]) for r in rows] == [
        (f"2025-01-0{d}|eu", status) for d in (1, 2) for status in ("published", "superseded")
    ]
    assert rows[0]["version"] > rows[1]["version"]
    assert cli.main(["history", "orders", "-f", REGION_PROJECT, "--where", "region=mars"]) == cli.EXIT_USAGE
    assert "no partition mars" in capsys.readouterr().err


def test_dynamic_partitions_are_keyed_like_static_ones(con):
    """A dynamic definition (tenants added at run time): its keys are the column's values, as static ones."""
    spec = region_spec(name="by_tenant", partitions=dg.DynamicPartitionsDefinition(name="tenants"),
                       partition_column="region")  # fmt: skip
    run(con, spec, REGION_SQL, ["acme", "globex"], 1)
    run(con, spec, REGION_SQL, ["acme"], 2)
    totals = dict(con.execute("SELECT region, sum(amount) FROM main.by_tenant GROUP BY 1").fetchall())
    per_key = {g: Decimal(sum(g * 100 + i for i in range(3))) for g in (1, 2)}  # REGION_SQL's three rows
    assert totals == {"acme": per_key[2], "globex": per_key[1]}


def test_an_hourly_table_through_the_cli_plans_publishes_diffs_and_rolls_back_an_hour(tmp_path, monkeypatch, capsys):
    """One day of clicks_hourly: plan and materialize say 24 partitions in one run, consumers read 24 distinct
    hours; a second generation of the day, then one hour rolled back alone: that hour reads generation 1 again and
    the others generation 2; diff of another hour compares its two generations."""
    db = tmp_path / "w.duckdb"
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    monkeypatch.setenv("REGION_PROJECT_GENERATION", str(tmp_path / "generation"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    day = ["--select", "clicks_hourly", "--from", "2025-01-02", "--to", "2025-01-02"]

    def cli_json(*args):
        assert cli.main([*args, "-f", REGION_PROJECT, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    [planned] = cli_json("plan", *day)["assets"]
    assert (planned["partitions"], planned["partition_count"]) == (["2025-01-02-00:00..2025-01-02-23:00"], 24)
    assert [r["partitions"] for r in cli_json("materialize", *day)["runs"]] == [24]
    (tmp_path / "generation").write_text("2")
    cli_json("materialize", *day)
    assert cli.main(["rollback", "clicks_hourly", "-f", REGION_PROJECT, "--partition", "2025-01-02-05:00"]) == 0
    capsys.readouterr()
    with duckdb.connect(str(db), read_only=True) as con:
        hours = con.execute(
            "SELECT hour AT TIME ZONE 'UTC', sum(n) FROM main.clicks_hourly GROUP BY 1 ORDER BY 1"
        ).fetchall()
    expected = {h: sum((1 if h == 5 else 2) * 100 + i for i in range(2)) for h in range(24)}
    assert [(t.hour, n) for t, n in hours] == sorted(expected.items())
    assert {t.date() for t, _ in hours} == {dt.date(2025, 1, 2)}
    [metric] = cli_json("diff", "clicks_hourly", "--partition", "2025-01-02-06:00")["metrics"]  # previous -> published
    assert [(p["partition"], p["before"], p["after"]) for p in metric["partitions"]] == [
        ("2025-01-02-06:00", str(expected[5]), str(expected[6]))
    ]


def test_a_new_york_daily_table_through_the_cli_keeps_local_days_and_rolls_back_a_day(tmp_path, monkeypatch, capsys):
    """visits_ny, daily in America/New_York, over the weekend its clocks went forward (2025-03-08..10): plan and
    materialize say 3 partitions in one run, and each visit is in its local day by zoneinfo (the partition
    column holds the instant the day starts, so the windows the scheme binds must be New York's). Generation 2, staged
    in a branch: its notes give the days' total before and after, then it publishes; the 9th rolled back alone
    reads generation 1 again; diff of the 10th compares its two generations. Expected values: the test's own
    model of the project's visits (one every 5 hours from 2025-03-01 00:00 UTC, n = generation * 100 + i)."""
    db = tmp_path / "w.duckdb"
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    monkeypatch.setenv("REGION_PROJECT_GENERATION", str(tmp_path / "generation"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    new_york, days = (
        ZoneInfo("America/New_York"),
        ["--select", "visits_ny", "--from", "2025-03-08", "--to", "2025-03-10"],
    )
    visits = [(i, dt.datetime(2025, 3, 1, tzinfo=dt.UTC) + dt.timedelta(hours=5 * i)) for i in range(80)]
    local_day = {i: at.astimezone(new_york).date() for i, at in visits}
    kept = [(i, at) for i, at in visits if dt.date(2025, 3, 8) <= local_day[i] <= dt.date(2025, 3, 10)]

    def total(gen, day=None):
        return sum(gen * 100 + i for i, _ in kept if day is None or local_day[i] == day)

    def cli_json(*args):
        assert cli.main([*args, "-f", REGION_PROJECT, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    def read():
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("SELECT day, ts, n FROM main.visits_ny ORDER BY ts").fetchall()

    [planned] = cli_json("plan", *days)["assets"]
    assert (planned["partitions"], planned["partition_count"]) == (["2025-03-08..2025-03-10"], 3)
    assert [r["partitions"] for r in cli_json("materialize", *days)["runs"]] == [3]
    starts = {d: dt.datetime.combine(d, dt.time(), new_york) for d in set(local_day.values())}
    assert [(d, at, n) for d, at, n in read()] == [(starts[local_day[i]], at, 100 + i) for i, at in kept]
    assert starts[dt.date(2025, 3, 10)].astimezone(dt.UTC) - starts[dt.date(2025, 3, 9)] == dt.timedelta(hours=23)

    (tmp_path / "generation").write_text("2")
    assert cli.main(["materialize", *days, "-f", REGION_PROJECT, "--branch", "fix"]) == 0
    capsys.readouterr()
    assert cli.main(["notes", "--branch", "fix", "-f", REGION_PROJECT, "--format", "json", "--out", str(tmp_path)]) == 0
    note = json.loads(capsys.readouterr().out)
    [n] = [m for m in note["metrics"] if (m["asset"], m["metric"]) == ("visits_ny", "n")]
    assert (Decimal(str(n["before"])), Decimal(str(n["after"]))) == (total(1), total(2))
    assert cli.main(["branch", "publish", "fix", "-f", REGION_PROJECT, "--by", "ana"]) == 0
    assert cli.main(["rollback", "visits_ny", "-f", REGION_PROJECT, "--partition", "2025-03-09"]) == 0
    capsys.readouterr()
    gen = {dt.date(2025, 3, 8): 2, dt.date(2025, 3, 9): 1, dt.date(2025, 3, 10): 2}
    assert [(d, n) for d, _, n in read()] == [(starts[local_day[i]], gen[local_day[i]] * 100 + i) for i, _ in kept]
    [metric] = cli_json("diff", "visits_ny", "--partition", "2025-03-10")["metrics"]  # previous -> published
    assert [(p["partition"], p["before"], p["after"]) for p in metric["partitions"]] == [
        ("2025-03-10", str(total(1, dt.date(2025, 3, 10))), str(total(2, dt.date(2025, 3, 10))))
    ]
