"""The trust core on a user's own small project, through the CLI only (issue 18's six cases).

The project below is not the reference pipeline: a payments table whose content is chosen per run by an
environment variable (the "generation"), a transfers table keyed across partitions, a rolling table that reads
its upstream's D..D+2, and an hourly clicks table in Berlin time. Every expected value comes from this file's
own model (which generation consumers must read) or from pandas over the raw rows, never from the library.
"""

import datetime as dt
import json
import textwrap
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pandas as pd
import pytest

from backfill_assets import cli

PROJECT = textwrap.dedent(
    '''
    import os

    import dagster as dg

    import backfill_assets as bfa

    daily = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-02-01")
    hourly = dg.HourlyPartitionsDefinition(
        start_date="2025-01-01-00:00", end_date="2025-01-03-00:00", timezone="Europe/Berlin"
    )


    def env():
        return {
            "gen": int(os.environ.get("PAY_GEN", "1")),
            "note": os.environ.get("PAY_NOTE", ""),
            "tid": os.environ.get("PAY_TID", ""),
        }


    def payments(ctx):
        rel = ctx.sql(
            "SELECT d::DATE AS day, strftime(d, '%Y%m%d') || '-' || i AS id, ($gen * 100 + i)::BIGINT AS amount "
            "FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), range(3) t(i)"
        )
        return rel.select("*, 'new field' AS note") if ctx.params["note"] else rel


    payments_spec = bfa.TableSpec(
        name="payments", partitions=daily, partition_column="day", grain=["id"], columns={}, code_version="1",
        metrics={"total": "sum(amount)"}, max_row_change=100.0,
        rules=[bfa.Invariant("no_negative_amounts", "SELECT * FROM candidate WHERE amount < 0")],
    )
    transfers_spec = bfa.TableSpec(
        name="transfers", partitions=daily, partition_column="day", grain=["transfer_id"], columns={},
        code_version="1",
    )
    TRANSFERS = "SELECT $start::DATE AS day, coalesce(nullif($tid, ''), 't-' || $start::DATE) AS transfer_id, 1 AS n"
    balances_spec = bfa.TableSpec(
        name="balances", partitions=daily, partition_column="day", grain=["day"], columns={}, code_version="1",
    )
    rolling_spec = bfa.TableSpec(
        name="rolling", partitions=daily, partition_column="day", grain=["day"], columns={}, code_version="1",
    )
    forecast_spec = bfa.TableSpec(
        name="forecast", partitions=daily, partition_column="day", grain=["day"], columns={}, code_version="1",
        incomplete_inputs="provisional",
    )
    clicks_spec = bfa.TableSpec(
        name="clicks_hourly", partitions=hourly, partition_column="hour", grain=["click_id"],
        columns={"hour": bfa.Column("TIMESTAMPTZ"), "click_id": bfa.Column("BIGINT"),
                 "ts": bfa.Column("TIMESTAMPTZ")},
        code_version="1",
    )
    CLICKS = (
        "SELECT date_trunc('hour', ts) AS hour, click_id, ts FROM ("
        "  SELECT TIMESTAMPTZ '2024-12-31 23:00:00+00' + i * INTERVAL 7 MINUTE AS ts, i AS click_id"
        "  FROM range(500) t(i)"
        ") WHERE ts >= $start AND ts < $end"
    )

    balances = bfa.derived_asset(
        balances_spec, "SELECT d::DATE AS day, 10 AS balance FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d)"
    )
    rolling = bfa.derived_asset(
        rolling_spec,
        "SELECT $start::DATE AS day, sum(balance) AS next_three FROM main.balances "
        "WHERE day >= $start::DATE AND day < $end::DATE + 2",
        deps=[dg.AssetDep(balances, partition_mapping=dg.TimeWindowPartitionMapping(end_offset=2))],
    )
    forecast = bfa.derived_asset(
        forecast_spec,
        "SELECT $start::DATE AS day, count(*) AS days_in FROM main.balances WHERE day >= $start::DATE "
        "AND day < $end::DATE + 2",
        deps=[dg.AssetDep(balances, partition_mapping=dg.TimeWindowPartitionMapping(end_offset=2))],
    )
    defs = dg.Definitions(
        assets=[
            bfa.derived_asset(payments_spec, payments, params=env),
            bfa.derived_asset(transfers_spec, TRANSFERS, params=env),
            balances,
            rolling,
            forecast,
            bfa.derived_asset(clicks_spec, CLICKS),
        ],
        resources={"warehouse": bfa.Warehouse()},
        executor=dg.in_process_executor,
    )
    '''
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "payments_project.py").write_text(PROJECT)
    db = tmp_path / "data" / "warehouse.duckdb"
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return db


def bfa_cli(*args: str, **env: str) -> int:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        return cli.main([args[0], "-f", "payments_project.py", *args[1:]])


def materialize(asset: str, first: str, last: str | None = None, **env: str) -> int:
    return bfa_cli("materialize", "--select", f"key:{asset}", "--from", first, "--to", last or first, **env)


def read(db, sql: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def payment_rows(db, day: str) -> list[tuple]:
    return read(db, "SELECT id, amount FROM main.payments WHERE day = ?::DATE ORDER BY id", [day])


def generation(key: str, gen: int) -> list[tuple]:
    """The rows the project's payments transform makes for one day of generation `gen` (the test's model)."""
    return [(f"{key.replace('-', '')}-{i}", gen * 100 + i) for i in range(3)]


def test_a_second_rollback_restores_what_was_published_before_the_last_publish(project, capsys):
    day = "2025-01-10"
    stack: list[int] = []  # the model: generations published, newest last; a rollback pops one
    for gen in (1, 2, 3):
        assert materialize("payments", day, PAY_GEN=str(gen)) == cli.EXIT_OK
        stack.append(gen)
    assert bfa_cli("rollback", "payments", "--partition", day) == cli.EXIT_OK
    stack.pop()
    assert payment_rows(project, day) == generation(day, stack[-1])  # g2

    assert materialize("payments", day, PAY_GEN="4") == cli.EXIT_OK
    stack.append(4)
    capsys.readouterr()
    assert bfa_cli("diff", "payments", "--partition", day, "--base", "previous", "--json") == cli.EXIT_OK
    versions = json.loads(capsys.readouterr().out)["versions"][day]
    base_total = read(project, f"SELECT sum(amount) FROM bfa.payments WHERE _bfa_version = {int(versions['base'])}")
    assert base_total == [(sum(a for _, a in generation(day, stack[-2])),)]  # previous of g4 is g2, not g3

    assert bfa_cli("rollback", "payments", "--partition", day) == cli.EXIT_OK
    stack.pop()
    assert payment_rows(project, day) == generation(day, stack[-1])  # g2 again, never the rejected g3
    assert bfa_cli("rollback", "payments", "--partition", day) == cli.EXIT_OK
    stack.pop()
    assert payment_rows(project, day) == generation(day, stack[-1])  # and one further back: g1
    capsys.readouterr()
    assert bfa_cli("rollback", "payments", "--partition", day) == cli.EXIT_USAGE
    assert "no earlier version to roll back to" in capsys.readouterr().err
    assert payment_rows(project, day) == generation(day, 1)

    # An explicit --to-version is a move like a publish: the next rollback undoes it.
    (g3,) = read(project, "SELECT DISTINCT _bfa_version FROM bfa.payments WHERE amount = 300")[0]
    assert bfa_cli("rollback", "payments", "--partition", day, "--to-version", str(g3)) == cli.EXIT_OK
    assert payment_rows(project, day) == generation(day, 3)
    assert bfa_cli("rollback", "payments", "--partition", day) == cli.EXIT_OK
    assert payment_rows(project, day) == generation(day, 1)


def test_a_held_runs_new_column_reaches_no_consumers_view_and_hashes_stay_stable(project, capsys):
    assert materialize("payments", "2025-01-01", "2025-01-03", PAY_GEN="1") == cli.EXIT_OK
    first = {k: h for k, _, h in _published(project, "payments")}
    # A bad run that also adds a column: held, and its ALTER TABLE must not leak into what consumers read.
    assert materialize("payments", "2025-01-02", PAY_GEN="-1", PAY_NOTE="1") == cli.EXIT_HELD
    assert "no_negative_amounts" in capsys.readouterr().out
    assert materialize("payments", "2025-01-05", PAY_GEN="2") == cli.EXIT_OK  # an unrelated publish
    columns = [c for c, *_ in read(project, "DESCRIBE main.payments")]
    assert columns == ["day", "id", "amount"]
    assert payment_rows(project, "2025-01-02") == generation("2025-01-02", 1)

    # The same code over the same range publishes the same content hashes, whatever the table went through.
    assert materialize("payments", "2025-01-01", "2025-01-03", PAY_GEN="1") == cli.EXIT_OK
    again = {k: h for k, _, h in _published(project, "payments") if k in first}
    assert again == first
    # And a version that has the new column brings it into the view only when it is published.
    assert materialize("payments", "2025-01-06", PAY_GEN="3", PAY_NOTE="1") == cli.EXIT_OK
    assert [c for c, *_ in read(project, "DESCRIBE main.payments")] == ["day", "id", "amount", "note"]
    notes = read(project, "SELECT day::VARCHAR, count(note) FROM main.payments GROUP BY 1 ORDER BY 1")
    assert notes == [(d, 3 if d == "2025-01-06" else 0) for d in sorted({*first, "2025-01-05", "2025-01-06"})]


def _published(db, asset: str) -> list[tuple]:
    return read(
        db,
        "SELECT p.partition_key, p.version, v.content_hash FROM bfa.published p JOIN bfa.versions v USING (version) "
        "WHERE p.asset = ? ORDER BY 1",
        [asset],
    )


def test_a_grain_key_published_in_another_partition_is_held(project, capsys):
    assert materialize("transfers", "2025-01-20", PAY_TID="evt-1") == cli.EXIT_OK
    before = _published(project, "transfers")
    capsys.readouterr()
    assert materialize("transfers", "2025-01-21", PAY_TID="evt-1") == cli.EXIT_HELD
    out = capsys.readouterr().out
    assert "check 'unique_grain' failed" in out and "transfer_id=evt-1 in 2025-01-20" in out
    assert _published(project, "transfers") == before
    assert read(project, "SELECT transfer_id, count(*) FROM main.transfers GROUP BY 1") == [("evt-1", 1)]
    # Re-running the partition that holds the key is no duplicate: its own rows are replaced.
    assert materialize("transfers", "2025-01-20", PAY_TID="evt-1") == cli.EXIT_OK


def test_a_partition_whose_inputs_are_not_published_is_refused_before_it_runs(project, capsys):
    assert materialize("balances", "2025-01-10") == cli.EXIT_OK
    capsys.readouterr()
    assert materialize("rolling", "2025-01-10") == cli.EXIT_HELD
    out = capsys.readouterr().out
    assert "not run: rolling 2025-01-10 reads upstream partitions that are not published: balances 2025-01-11.." in out
    assert read(project, "SELECT count(*) FROM bfa.versions WHERE asset = 'rolling'") == [(0,)]
    assert not _has_view(project, "rolling")  # nothing was computed, so there is nothing to read
    # Dagster itself (a UI backfill, `dagster asset materialize`) meets the inputs gate inside the run:
    result = cli.load_definitions("payments_project.py").resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[dg.AssetKey("rolling")], partition_key="2025-01-10", raise_on_error=False
    )
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    message = failure.event_specific_data.user_failure_data.description
    assert "check 'inputs_complete' failed" in message and "balances 2025-01-11, 2025-01-12" in message
    refused = read(project, "SELECT action, partition_keys FROM bfa.ledger WHERE asset = 'rolling'")
    assert refused == [("refuse", ["2025-01-10"])]

    assert materialize("balances", "2025-01-11", "2025-01-12") == cli.EXIT_OK
    assert materialize("rolling", "2025-01-10") == cli.EXIT_OK
    assert read(project, "SELECT day::VARCHAR, next_three FROM main.rolling") == [("2025-01-10", 30)]


def test_a_provisional_table_publishes_before_late_inputs_and_plan_stale_lists_it_once_they_are_in(
    project, capsys
):
    assert materialize("balances", "2025-01-10") == cli.EXIT_OK
    capsys.readouterr()
    assert materialize("forecast", "2025-01-11") == cli.EXIT_HELD  # its own day is missing: refused
    assert "balances 2025-01-11" in capsys.readouterr().out
    assert materialize("forecast", "2025-01-10") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "published (provisional, before late inputs: forecast 2025-01-10)" in out
    published_missing = "SELECT missing_inputs FROM bfa.versions WHERE asset = 'forecast' AND status = 'published'"
    assert read(project, published_missing) == [(["balances 2025-01-11", "balances 2025-01-12"],)]
    capsys.readouterr()
    assert bfa_cli("history", "forecast") == cli.EXIT_OK
    assert "published*" in capsys.readouterr().out
    assert read(project, "SELECT days_in FROM main.forecast") == [(1,)]
    assert bfa_cli("plan", "--stale", "--json") == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["assets"] == []

    assert materialize("balances", "2025-01-11", "2025-01-12") == cli.EXIT_OK
    capsys.readouterr()
    assert bfa_cli("plan", "--stale", "--json") == cli.EXIT_OK
    stale = {a["asset"]: (a["partitions"], a["reason"]) for a in json.loads(capsys.readouterr().out)["assets"]}
    assert stale["forecast"][0] == ["2025-01-10"] and stale["forecast"][1].startswith("provisional")
    assert materialize("forecast", "2025-01-10") == cli.EXIT_OK
    assert "provisional" not in capsys.readouterr().out
    assert read(project, "SELECT days_in FROM main.forecast") == [(3,)]
    assert read(project, published_missing) == [(None,)]


def _has_view(db, name: str) -> bool:
    return bool(read(db, "SELECT 1 FROM duckdb_views() WHERE view_name = ?", [name]))


def test_hourly_partitions_in_berlin_time_publish_each_hour_once(project):
    assert materialize("clicks_hourly", "2025-01-01") == cli.EXIT_OK
    # pandas over the raw clicks: the hours of 1 January in Berlin, and each hour's clicks
    start = dt.datetime(2024, 12, 31, 23, tzinfo=dt.UTC)
    raw = pd.DataFrame({"click_id": range(500), "ts": [start + dt.timedelta(minutes=7 * i) for i in range(500)]})
    local = raw["ts"].dt.tz_convert("Europe/Berlin")
    jan1 = raw[local.dt.date == dt.date(2025, 1, 1)]
    expected = jan1.groupby(jan1["ts"].dt.floor("h"))["click_id"].apply(sorted).to_dict()
    assert len(expected) == 24

    keys = read(project, "SELECT partition_key FROM bfa.published WHERE asset = 'clicks_hourly' ORDER BY 1")
    assert [k for (k,) in keys] == [f"2025-01-01-{h:02d}:00" for h in range(24)]
    rows = read(project, "SELECT hour, list(click_id ORDER BY click_id) FROM main.clicks_hourly GROUP BY 1")
    assert {h.astimezone(dt.UTC): ids for h, ids in rows} == {h.to_pydatetime(): ids for h, ids in expected.items()}
    # Each partition's version holds exactly its hour's rows.
    per_version = read(
        project,
        "SELECT v.partition_key, count(*) FROM bfa.clicks_hourly c JOIN bfa.versions v ON v.version = c._bfa_version "
        "GROUP BY 1 ORDER BY 1",
    )
    berlin = ZoneInfo("Europe/Berlin")
    assert per_version == [
        (f"2025-01-01-{h:02d}:00", len(expected[pd.Timestamp(dt.datetime(2025, 1, 1, h, tzinfo=berlin))]))
        for h in range(24)
    ]


def test_small_truths_of_the_cli_on_a_users_project(project, capsys):
    """plan --stale with nothing stale says so (no empty table); history's columns fit what they hold."""
    assert materialize("payments", "2025-01-01", PAY_GEN="1") == cli.EXIT_OK
    capsys.readouterr()
    assert bfa_cli("plan", "--stale") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "Nothing to backfill." in out and "asset  " not in out
    assert bfa_cli("history", "payments", "--partition", "2025-01-01") == cli.EXIT_OK
    header, row, *_ = capsys.readouterr().out.splitlines()
    (run_id,) = read(project, "SELECT run_id FROM bfa.versions WHERE row_count = 3")[0]
    assert header.index("run") == row.index(run_id[:8])
    assert header.endswith("status since (UTC)")


def test_a_held_reconcile_names_money_to_the_cent(tmp_path):
    """`revenue 912258.12 vs expected 456129.06`, not rounded to six digits."""
    import backfill_assets as bfa

    con = bfa.warehouse.connect(str(tmp_path / "w.duckdb"))
    spec = bfa.TableSpec(
        name="revenue", partitions=dg.DailyPartitionsDefinition(start_date="2025-01-01"), partition_column="day",
        grain=["day"], columns={}, code_version="1", metrics={"revenue": "sum(amount)"},
        rules=[bfa.Reconcile("matches_payments", "revenue", "SELECT $start::DATE, 456129.06")],
    )  # fmt: skip
    report = bfa.write_audit_publish(
        con, spec, "SELECT $start::DATE AS day, 912258.12::DECIMAL(18, 2) AS amount", ["2025-01-01"], run_id="r"
    )
    con.close()
    assert "revenue 912258.12 vs expected 456129.06" in report.failure_message()
