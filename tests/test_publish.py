"""Write-audit-publish on a small table, straight through the library (no Dagster run)."""

import datetime as dt
import os
import re
from decimal import Decimal

import dagster as dg
import duckdb
import pandas as pd
import pandera.pandas as pa
import pytest

from backfill_assets import (
    Column,
    Invariant,
    Reconcile,
    TableSpec,
    WarehouseError,
    audit_published,
    catalog,
    history,
    published_partitions,
)
from backfill_assets import warehouse as wh
from backfill_assets.publish import write_audit_publish

DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01")

# Three rows per day: ids 0..2 of the day, amount = id + 1.
GOOD_SQL = """
SELECT strftime(d, '%Y%m%d') || '-' || i AS id, d::DATE AS d, (i + 1)::DECIMAL(18, 2) AS amount
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), range(3) t(i)
"""


def make_spec(**overrides) -> TableSpec:
    fields = dict(
        name="orders",
        partitions=DAILY,
        partition_column="d",
        grain=["id"],
        columns={
            "id": Column("VARCHAR", nullable=False),
            "d": Column("DATE", nullable=False),
            "amount": Column("DECIMAL(18,2)", checks=[pa.Check.ge(0)]),
        },
        metrics={"total": "sum(amount)"},
        code_version="1",
    )
    return TableSpec(**{**fields, **overrides})


JAN_1_3 = ["2025-01-01", "2025-01-02", "2025-01-03"]


@pytest.fixture
def con(tmp_path):
    c = wh.connect(str(tmp_path / "w.duckdb"))
    yield c
    c.close()


def wap(con, spec, sql, partitions=JAN_1_3, run_id="r1", **kw):
    return write_audit_publish(con, spec, sql, partitions, run_id=run_id, **kw)


def view_rows(con, table="orders"):
    return con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


def statuses(con):
    return dict(con.execute("SELECT status, count(*) FROM bfa.versions GROUP BY 1").fetchall())


def failed(report):
    return {o.name: o for o in report.failed}


def test_publish_makes_rows_readable_and_records_the_ledger(con):
    report = wap(con, make_spec(), GOOD_SQL)
    assert report.published and not report.failed
    assert len(view_rows(con)) == 9
    assert {k: n for k, (_, n, _) in published_partitions(con, "orders").items()} == {k: 3 for k in JAN_1_3}
    action, keys, rows, checks = con.execute(
        "SELECT action, partition_keys, row_count, checks FROM bfa.ledger"
    ).fetchall()[0]
    assert (action, keys, rows) == ("publish", JAN_1_3, 9)
    assert '"unique_grain"' in checks and '"passed": true' in checks
    assert report.metrics_after["2025-01-02"]["total"] == 6


def test_the_warehouse_file_holds_only_what_consumers_read_after_a_run(tmp_path):
    """A run's scratch views stay on its connection: another connection to the file sees the table's view and
    the pointer view in main, nothing else (a view of the last transform there would be read by anyone)."""
    db = str(tmp_path / "w.duckdb")
    with wh.connect(db) as c:
        assert wap(c, make_spec(), GOOD_SQL).published
    with duckdb.connect(db, read_only=True) as other:
        views = other.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal")
        assert sorted(v for (v,) in views.fetchall()) == ["_bfa_pointer", "orders"]
    with duckdb.connect(db) as c:  # the view earlier releases left there goes when the catalog is next opened
        c.execute("CREATE VIEW main._bfa_source AS SELECT 1 AS leaked")
        catalog.ensure(c)
        assert c.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = '_bfa_source'").fetchone() == (0,)


def test_rerun_publishes_identical_content_without_duplicates(con):
    first = wap(con, make_spec(), GOOD_SQL)
    before = view_rows(con)
    second = wap(con, make_spec(), GOOD_SQL, run_id="r2")
    assert view_rows(con) == before
    for key in first.partitions:
        old_version, _, old_hash = first.partitions[key]
        new_version, _, new_hash = second.partitions[key]
        assert new_version != old_version and new_hash == old_hash
    assert statuses(con) == {"published": 3, "superseded": 3}


def test_duplicate_grain_fails_uniqueness_and_publishes_nothing(con):
    report = wap(con, make_spec(), GOOD_SQL + " UNION ALL SELECT '20250102-1', DATE '2025-01-02', 2")
    assert not report.published
    unique = failed(report)["unique_grain"]
    assert unique.figures == {
        "duplicate_keys": 1, "duplicate_rows": 1, "null_key_rows": 0, "keys_published_in_other_partitions": 0
    }  # fmt: skip
    assert unique.failures[0]["id"] == "20250102-1" and unique.failures[0]["copies"] == 2
    assert view_rows(con) == []
    assert statuses(con) == {"held": 3}
    # The held candidate stays inspectable next to the (empty) published data.
    assert con.execute("SELECT count(*) FROM bfa.orders").fetchall()[0][0] == 10
    assert con.execute("SELECT action FROM bfa.ledger").fetchall() == [("hold",)]
    assert "unique_grain" in report.failure_message() and "Published data is unchanged" in report.failure_message()


def test_failed_audit_leaves_published_rows_exactly_as_they_were(con):
    wap(con, make_spec(), GOOD_SQL)
    before = view_rows(con)
    report = wap(con, make_spec(), GOOD_SQL + " WHERE d <> DATE '2025-01-02'", run_id="r2")
    assert not report.published
    assert view_rows(con) == before


def test_null_grain_keys_fail_uniqueness(con):
    report = wap(
        con,
        make_spec(),
        GOOD_SQL.replace("strftime(d, '%Y%m%d') || '-' || i", "CASE WHEN i = 0 THEN NULL ELSE i::VARCHAR || d END"),
    )
    assert failed(report)["unique_grain"].figures["null_key_rows"] == 3


def test_empty_partition_fails_completeness_unless_sparse(con):
    sql = GOOD_SQL + " WHERE d <> DATE '2025-01-02'"
    report = wap(con, make_spec(), sql)
    complete = failed(report)["complete"]
    assert complete.figures["empty_partitions"] == 1 and "2025-01-02" in complete.summary
    assert wap(con, make_spec(sparse=True), sql, run_id="r2").published


def test_rows_outside_the_window_fail_completeness(con):
    report = wap(con, make_spec(), GOOD_SQL + " UNION ALL SELECT 'stray', DATE '2025-02-01', 1")
    assert failed(report)["complete"].figures["rows_outside_window"] == 1


MONTHLY_SQL = """
SELECT strftime(d, '%Y%m') || '-' || i AS id, d::DATE AS d, (i + 1)::DECIMAL(18, 2) AS amount
FROM range($start::DATE, $end::DATE, INTERVAL 1 MONTH) r(d), range(3) t(i)
"""


@pytest.mark.parametrize(
    "partitions, sql, keys",
    [
        (DAILY, GOOD_SQL, [f"2025-01-0{d}" for d in (5, 4, 3, 2, 1)]),  # any order: staged in time order
        (dg.MonthlyPartitionsDefinition(start_date="2025-01-01"), MONTHLY_SQL, [f"2025-0{m}-01" for m in range(1, 6)]),
    ],
)
def test_a_long_range_is_staged_in_slices_with_the_same_result(tmp_path, partitions, sql, keys):
    results = {}
    for per_write in (31, 2):
        con = wh.connect(str(tmp_path / f"{per_write}.duckdb"))
        lines = []
        report = wap(con, make_spec(partitions=partitions, partitions_per_write=per_write), sql, keys, log=lines.append)
        assert report.published, report.failure_message()
        window = con.execute("SELECT params->>'$.window.start', params->>'$.window.end' FROM bfa.ledger").fetchall()
        results[per_write] = (view_rows(con), {k: h for k, (_, _, h) in report.partitions.items()}, window, lines)
        con.close()
    (rows, hashes, window, lines), (sliced_rows, sliced_hashes, sliced_window, sliced_lines) = results.values()
    assert len(rows) == 15 and sliced_rows == rows and sliced_hashes == hashes and sliced_window == window
    first, last = sorted(keys)[0], sorted(keys)[-1]
    assert lines == [] and len(sliced_lines) == 3
    assert sliced_lines[0].startswith(f"orders: staged {first}..{sorted(keys)[1]} (slice 1 of 3) in ")
    assert sliced_lines[2].startswith(f"orders: staged {last}..{last} (slice 3 of 3) in ")


def test_rows_are_written_in_partition_order(con):
    newest_first = f"SELECT * FROM ({GOOD_SQL}) ORDER BY d DESC"
    assert wap(con, make_spec(), newest_first).published
    written = [r[0] for r in con.execute("SELECT d FROM bfa.orders ORDER BY rowid").fetchall()]
    assert written == sorted(written) and len(set(written)) == 3


def test_a_slice_rows_outside_its_own_partitions_are_strays(con):
    ignores_window = GOOD_SQL.replace("$start::DATE, $end::DATE", "DATE '2025-01-01', DATE '2025-01-05'")
    report = wap(con, make_spec(partitions_per_write=2), ignores_window, [*JAN_1_3, "2025-01-04"])
    complete = failed(report)["complete"]
    # Each slice returned all 12 rows: 6 in its partitions, 6 strays; no partition counted twice.
    assert complete.figures["rows_outside_window"] == 12
    assert {k: n for k, (_, n, _) in report.partitions.items()} == dict.fromkeys([*JAN_1_3, "2025-01-04"], 3)
    assert view_rows(con) == []


def test_row_count_change_beyond_tolerance_fails(con):
    wap(con, make_spec(), GOOD_SQL)
    fewer = GOOD_SQL.replace("range(3)", "range(1)")
    complete = failed(wap(con, make_spec(), fewer, run_id="r2"))["complete"]
    assert complete.figures["partitions_moved_beyond_tolerance"] == 3
    assert complete.failures[0] == {
        "partition": "2025-01-01",
        "problem": "row count moved",
        "rows": 1,
        "published_rows": 3,
        "change": "-66.7%",
    }
    assert wap(con, make_spec(max_row_change=0.7), fewer, run_id="r3").published


def test_null_rate_bounds(con):
    sql = GOOD_SQL.replace("(i + 1)::DECIMAL(18, 2)", "CASE WHEN i = 0 THEN NULL ELSE i END::DECIMAL(18, 2)")
    strict = make_spec(columns={**make_spec().columns, "amount": Column("DECIMAL(18,2)", max_null_rate=0.2)})
    assert (
        "null rate above 20.00% in 3 partitions (worst 2025-01-01: 33.33%)"
        in failed(wap(con, strict, sql))["complete"].summary
    )
    loose = make_spec(columns={**make_spec().columns, "amount": Column("DECIMAL(18,2)", max_null_rate=0.5)})
    assert wap(con, loose, sql, run_id="r2").published


def test_reconciliation_compares_each_partition_with_tolerance(con):
    expected = (
        "SELECT d::DATE, 6 + (d = DATE '2025-01-03')::INT * $bump "
        "FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d)"
    )
    rule = Reconcile("total_is_six", "total", expected, abs_tol=0.5)
    report = wap(con, make_spec(rules=[rule]), GOOD_SQL, params={"bump": 1})
    rec = failed(report)["reconciled"]
    assert rec.figures["total_is_six.partitions_off"] == 1
    assert rec.failures == [
        {"rule": "total_is_six", "partition": "2025-01-03", "actual": 6.0, "expected": 7.0, "difference": -1.0}
    ]
    assert wap(con, make_spec(rules=[rule]), GOOD_SQL, run_id="r2", params={"bump": 0.4}).published


def test_reconcile_rules_run_per_write_slice_and_keep_each_slice_dates(con):
    # Right (6) only for a window of at most 2 days, and wrong for the day before the window, which it returns too.
    expected = (
        "SELECT d::DATE, CASE WHEN d < $start OR $end::DATE - $start::DATE > 2 THEN -1 ELSE 6 END "
        "FROM range($start::DATE - 1, $end::DATE, INTERVAL 1 DAY) r(d)"
    )
    rule = Reconcile("total_is_six", "total", expected)
    keys = [*JAN_1_3, "2025-01-04"]
    assert wap(con, make_spec(rules=[rule], partitions_per_write=2), GOOD_SQL, keys).published
    whole = failed(wap(con, make_spec(rules=[rule]), GOOD_SQL, keys, run_id="r2"))["reconciled"]
    assert whole.figures["total_is_six.partitions_off"] == 4


def published_metric(con, metric="total", asset="orders"):
    return con.execute(
        "SELECT * FROM bfa.published_metric(?, ?, DATE '2025-01-01', DATE '2025-01-04') ORDER BY 1", [asset, metric]
    ).fetchall()


def test_a_downstream_reconciles_with_the_metrics_its_upstream_recorded(con):
    first = wap(con, make_spec(), GOOD_SQL)
    doubled = GOOD_SQL.replace("(i + 1)", "2 * (i + 1)")
    never = Invariant("never", "SELECT * FROM candidate")
    assert not wap(con, make_spec(rules=[never]), doubled, run_id="r2").passed  # a held version does not count
    assert published_metric(con) == [(dt.date(2025, 1, d), 6.0) for d in (1, 2, 3)]

    upstream = "SELECT * FROM bfa.published_metric('orders', 'total', $start, $end)"
    daily = make_spec(
        name="daily_totals",
        grain=["d"],
        columns={"d": Column("DATE"), "total": Column("DECIMAL(38,2)")},
        metrics={"total": "sum(total)"},
        rules=[Reconcile("matches_orders", "total", upstream)],
    )
    totals = "SELECT d, sum(amount) AS total FROM orders WHERE d >= $start AND d < $end {} GROUP BY 1"
    assert wap(con, daily, totals.format(""), run_id="d1").published
    rec = failed(wap(con, daily, totals.format("AND id NOT LIKE '%-0'"), run_id="d2"))["reconciled"]
    assert rec.figures["matches_orders.partitions_off"] == 3
    assert (rec.failures[0]["actual"], rec.failures[0]["expected"]) == (5.0, 6.0)

    # The expected values follow what orders publishes, and what it rolls back to.
    assert wap(con, make_spec(), doubled, ["2025-01-02"], run_id="r3").published
    assert published_metric(con)[1] == (dt.date(2025, 1, 2), 12.0)
    assert wap(con, daily, totals.format(""), ["2025-01-02"], run_id="d3").published
    history.rollback(con, {"orders": {"2025-01-02": first.partitions["2025-01-02"][0]}}, "test", "me")
    assert published_metric(con)[1] == (dt.date(2025, 1, 2), 6.0)


def test_published_metric_fills_old_warehouses_and_names_what_it_cannot_answer(tmp_path):
    path = str(tmp_path / "w.duckdb")
    con = wh.connect(path)
    wap(con, make_spec(sparse=True), GOOD_SQL + " WHERE d <> DATE '2025-01-02'")
    with pytest.raises(duckdb.InvalidInputException, match="orders partition 2025-01-01 has no recorded metric nope"):
        published_metric(con, "nope")
    # A warehouse from before versions kept their metrics gets them from the ledger.
    con.execute("ALTER TABLE bfa.versions DROP COLUMN metrics")
    con.close()
    con = wh.connect(path)
    assert published_metric(con) == [
        (dt.date(2025, 1, 1), 6.0),
        (dt.date(2025, 1, 2), None),
        (dt.date(2025, 1, 3), 6.0),
    ]
    con.execute("UPDATE bfa.versions SET metrics = NULL WHERE partition_key = '2025-01-03'")
    with pytest.raises(duckdb.InvalidInputException, match="2025-01-03 has no recorded metric total.*Republish that"):
        published_metric(con)
    con.execute("INSERT INTO bfa.published VALUES ('hourly', '2025-01-01-05:00', 1, now())")
    with pytest.raises(duckdb.InvalidInputException, match="hourly partition 2025-01-01-05:00 is not a date"):
        published_metric(con, asset="hourly")
    con.close()


def test_invariant_reports_violating_rows(con):
    rule = Invariant("small_amounts", "SELECT id, amount FROM candidate WHERE amount > 2")
    rec = failed(wap(con, make_spec(rules=[rule]), GOOD_SQL))["reconciled"]
    assert rec.figures["small_amounts.violations"] == 3
    assert {f["amount"] for f in rec.failures} == {3}


def test_schema_check_reports_types_and_value_checks(con):
    sql = GOOD_SQL.replace("(i + 1)::DECIMAL(18, 2)", "(i - 1)::DECIMAL(18, 2)")
    schema = failed(wap(con, make_spec(), sql))["schema"]
    assert any(f["problem"].startswith("check greater_than_or_equal_to") for f in schema.failures)
    typed = make_spec(columns={**make_spec().columns, "amount": Column("DOUBLE")})
    schema = failed(wap(con, typed, GOOD_SQL, run_id="r2"))["schema"]
    assert {"column": "amount", "problem": "type", "expected": "DOUBLE", "actual": "DECIMAL(18,2)"} in schema.failures


def test_python_transform_returning_a_dataframe(con):
    def transform(ctx):
        return pd.DataFrame({"id": [f"x{i}" for i in range(3)], "d": [ctx.start] * 3, "amount": [1.5] * 3}).astype(
            {"d": "datetime64[s]"}
        )

    spec = make_spec(columns={})
    report = write_audit_publish(con, spec, transform, ["2025-01-05"], run_id="py")
    assert report.published, report.failure_message()
    assert con.execute("SELECT count(*), sum(amount) FROM orders").fetchall() == [(3, 4.5)]


@pytest.mark.parametrize(
    "bad_sql, per_write",
    [
        ("SELECT no_such_column FROM range(1)", 31),  # fails when bound
        (GOOD_SQL.replace("(i + 1)::DECIMAL", "('x' || i)::DECIMAL"), 31),  # fails while rows are being written
        # fails in the last of three slices, after the first two were staged
        (GOOD_SQL.replace("(i + 1)::DECIMAL", "(CASE WHEN d < DATE '2025-01-03' THEN '1' ELSE 'x' END)::DECIMAL"), 1),
    ],
)
def test_transform_error_leaves_no_staged_versions(con, bad_sql, per_write):
    wap(con, make_spec(), GOOD_SQL)
    before = view_rows(con)
    with pytest.raises(duckdb.Error):
        wap(con, make_spec(partitions_per_write=per_write), bad_sql, run_id="r2")
    assert statuses(con) == {"published": 3, "abandoned": 4}
    assert view_rows(con) == before
    assert wap(con, make_spec(), GOOD_SQL, run_id="r3").published


def test_versions_left_staged_by_a_dead_run_are_abandoned(con):
    wap(con, make_spec(), GOOD_SQL)
    jan_1_3 = [(k, dt.date.fromisoformat(k)) for k in JAN_1_3]
    cand = wh.allocate(con, "orders", jan_1_3, "dead-run", "1")
    con.sql(GOOD_SQL, params={"start": dt.date(2025, 1, 1), "end": dt.date(2025, 1, 4)}).create_view("dead")
    wh.stage(con, cand, "d", "dead")  # rows committed, never audited nor published
    before = view_rows(con)
    assert wap(con, make_spec(), GOOD_SQL, run_id="r3").published
    assert view_rows(con) == before
    assert (
        con.execute(
            "SELECT count(*) FROM bfa.orders WHERE _bfa_version IN (SELECT unnest(?))", [list(cand.versions.values())]
        ).fetchall()[0][0]
        == 0
    )
    assert ("abandon",) in con.execute("SELECT action FROM bfa.ledger").fetchall()


def test_new_column_is_added_and_type_change_is_refused(con):
    wap(con, make_spec(columns={}), GOOD_SQL)
    wider = GOOD_SQL.replace("AS amount", "AS amount, 'web' AS channel")
    assert wap(con, make_spec(columns={}), wider, run_id="r2").published
    assert con.execute("SELECT DISTINCT channel FROM orders").fetchall() == [("web",)]
    published = con.execute("SELECT * FROM orders ORDER BY ALL").fetchall()
    with pytest.raises(WarehouseError, match=r"column 'amount' is DOUBLE in this run but DECIMAL\(18,2\) in versions"):
        wap(
            con,
            make_spec(columns={}),
            GOOD_SQL.replace("::DECIMAL(18, 2) AS amount", "::DOUBLE AS amount"),
            run_id="r3",
        )
    assert con.execute("SELECT * FROM orders ORDER BY ALL").fetchall() == published


def test_a_column_type_of_a_held_and_discarded_version_is_not_the_tables_for_good(con):
    """A version's column types are its own: once the only version with DOUBLE is discarded, DECIMAL publishes."""
    as_double = GOOD_SQL.replace("::DECIMAL(18, 2) AS amount", "::DOUBLE AS amount")
    held = wap(con, make_spec(), as_double)
    assert not held.passed and "amount: DOUBLE, declared DECIMAL(18,2)" in held.failure_message()
    history.discard(con, "orders", None, "ana", "not cents")
    assert wap(con, make_spec(), GOOD_SQL, run_id="r2").published
    assert con.execute("SELECT DISTINCT typeof(amount) FROM orders").fetchall() == [("DECIMAL(18,2)",)]
    expected = duckdb.sql(GOOD_SQL, params={"start": dt.date(2025, 1, 1), "end": dt.date(2025, 1, 4)})
    assert sorted(con.execute("SELECT * FROM orders").fetchall()) == sorted(expected.fetchall())


def test_audit_published_checks_what_consumers_read(con):
    assert not audit_published(con, make_spec())[0].passed  # nothing published yet
    wap(con, make_spec(), GOOD_SQL)
    assert all(o.passed for o in audit_published(con, make_spec()))
    rule = Invariant("tiny", "SELECT * FROM candidate WHERE amount > 1")
    outcomes = {o.name: o for o in audit_published(con, make_spec(rules=[rule]))}
    assert not outcomes["reconciled"].passed and outcomes["reconciled"].figures["tiny.violations"] == 6


def test_a_held_run_that_adds_a_column_leaves_the_consumers_view_unchanged(con):
    wap(con, make_spec(columns={}), GOOD_SQL)
    columns = [r[0] for r in con.execute("DESCRIBE orders").fetchall()]
    wider = GOOD_SQL.replace("AS amount", "AS amount, 'web' AS channel")
    held = wap(
        con, make_spec(columns={}), wider + " UNION ALL SELECT '20250101-0', DATE '2025-01-01', 1, 'x'", run_id="r2"
    )
    assert not held.published
    assert [r[0] for r in con.execute("DESCRIBE orders").fetchall()] == columns
    assert wap(con, make_spec(columns={}), wider, run_id="r3").published
    assert [r[0] for r in con.execute("DESCRIBE orders").fetchall()] == [*columns, "channel"]


def test_null_bounds_hold_per_partition_not_just_over_the_run(con):
    one_bad_day = GOOD_SQL.replace(
        "(i + 1)::DECIMAL(18, 2)", "CASE WHEN d = DATE '2025-01-02' THEN NULL ELSE i + 1 END::DECIMAL(18, 2)"
    )
    spec = make_spec(columns={**make_spec().columns, "amount": Column("DECIMAL(18,2)", max_null_rate=0.5)})
    complete = failed(wap(con, spec, one_bad_day))["complete"]  # 33% over the run, 100% on 2025-01-02
    assert "worst 2025-01-02: 100.00%" in complete.summary


def test_reserved_names_are_refused():
    from backfill_assets import SpecError

    with pytest.raises(SpecError, match="reserved for the warehouse catalog"):
        make_spec(name="ledger")


@pytest.mark.parametrize("per_write", [31, 1])  # one statement, or one per partition
def test_merge_by_key_keeps_or_deletes_missing_keys_as_declared(con, per_write):
    wap(con, make_spec(columns={}), GOOD_SQL)  # ids 0..2 of each day
    only_first = GOOD_SQL.replace("range(3)", "range(1)").replace("(i + 1)", "(i + 10)")
    merge = dict(columns={}, write_strategy="merge_by_key", partitions_per_write=per_write)
    assert wap(con, make_spec(**merge, missing_keys="keep"), only_first, run_id="r2").published
    rows = dict(con.execute("SELECT id, amount FROM orders WHERE d = DATE '2025-01-03'").fetchall())
    assert rows == {"20250103-0": 10, "20250103-1": 2, "20250103-2": 3}  # upserted, the others kept
    assert con.execute("SELECT count(*) FROM orders").fetchall()[0][0] == 9
    delete = make_spec(**merge, missing_keys="delete", max_row_change=1.0)
    assert wap(con, delete, only_first, run_id="r3").published
    assert con.execute("SELECT count(*) FROM orders").fetchall()[0][0] == 3  # one key per day left


def test_merge_by_key_requires_an_explicit_missing_keys_policy():
    from backfill_assets import SpecError

    with pytest.raises(SpecError, match="merge_by_key needs missing_keys"):
        make_spec(write_strategy="merge_by_key")


def test_parallel_version_waits_for_cutover(con):
    from backfill_assets import history

    spec = make_spec(columns={}, write_strategy="parallel_version")
    wap(con, make_spec(columns={}), GOOD_SQL)
    before = view_rows(con)
    report = wap(con, spec, GOOD_SQL.replace("(i + 1)", "(i + 5)"), run_id="r2")
    assert report.passed and not report.published
    assert view_rows(con) == before  # consumers still read the old version
    assert con.execute("SELECT sum(amount) FROM orders__candidate").fetchall()[0][0] == 3 * (5 + 6 + 7)
    assert sorted(history.cutover(con, "orders", ["2025-01-02"], "compared with diff")) == ["2025-01-02"]
    assert con.execute("SELECT sum(amount) FROM orders WHERE d = DATE '2025-01-02'").fetchall()[0][0] == 18
    assert con.execute("SELECT count(*) FROM orders__candidate").fetchall()[0][0] == 6  # two days still waiting
    actions = [r[0] for r in con.execute("SELECT action FROM bfa.ledger ORDER BY entry_id").fetchall()]
    assert actions == ["publish", "candidate", "cutover"]


def test_spec_sql_with_comments_semicolons_and_dollars_in_literals_runs_as_written(con):
    """A `$` inside a string literal or a comment is no parameter, and a trailing comment or `;` does not break
    the subquery a rule is wrapped in (DuckDB's tokenizer reads the SQL, not a regular expression)."""
    sql = GOOD_SQL.replace("AS amount", "AS amount, '$USD; -- not a comment' AS note") + "-- the end $x\n;"
    note = "'$USD; -- not a comment'"
    rules = [
        Invariant("labelled", f"SELECT * FROM candidate WHERE note <> {note} -- $y;\n;"),
        Reconcile("six_a_day", "total", "SELECT d::DATE, 6 FROM range($start, $end, INTERVAL 1 DAY) r(d); -- x"),
    ]
    spec = make_spec(columns={}, rules=rules)
    report = wap(con, spec, sql)
    assert report.published, report.failure_message()
    rows = con.execute("SELECT DISTINCT note FROM orders").fetchall()
    assert rows == [("$USD; -- not a comment",)]
    with pytest.raises(ValueError, match="one SQL statement"):
        Invariant("two", "SELECT 1; SELECT 2")


def test_a_catalog_from_before_the_pointer_history_is_brought_up_to_date(tmp_path):
    """A warehouse written by the previous release (no pointer history, no keys, no per-version columns):
    opening it replays the ledger into the pointer history, so the next rollback still returns to what was
    published before the last publish; keys and version columns are added."""
    path = str(tmp_path / "w.duckdb")
    con = wh.connect(path)
    spec, day = make_spec(columns={}, max_row_change=10.0), ["2025-01-02"]
    versions = {}
    for gen in (1, 2, 3):
        versions[gen] = wap(con, spec, GOOD_SQL.replace("(i + 1)", f"(i + {gen})"), day, run_id=f"g{gen}")
    history.rollback(con, {"orders": {"2025-01-02": versions[2].partitions["2025-01-02"][0]}}, "bad g3", "me")
    versions[4] = wap(con, spec, GOOD_SQL.replace("(i + 1)", "(i + 4)"), day, run_id="g4")
    ledger = con.execute("SELECT * FROM bfa.ledger ORDER BY entry_id").fetchall()
    # The previous release's layout: the same rows, without what this one added (the ledger compressed).
    for table, columns in (
        ("versions", "version, asset, partition_key, run_id, code_version, status, row_count, content_hash, "
                     "created_at, decided_at, metrics"),
        ("published", "*"),
        ("ledger", "*"),
    ):  # fmt: skip
        con.execute(f"CREATE TABLE bfa.{table}_old AS SELECT {columns} FROM bfa.{table}")
        con.execute(f"DROP TABLE bfa.{table}")
        con.execute(f"ALTER TABLE bfa.{table}_old RENAME TO {table}")
    con.execute("DROP TABLE bfa.pointer_history")
    v = {g: r.partitions["2025-01-02"][0] for g, r in versions.items()}
    con.execute(f"CREATE OR REPLACE VIEW main.orders AS SELECT * EXCLUDE (_bfa_version, _bfa_published) "
                f"FROM bfa.orders WHERE _bfa_version IN ({v[4]})")  # fmt: skip
    con.execute("ALTER TABLE bfa.orders DROP COLUMN _bfa_published")
    con.close()

    con = wh.connect(path)
    assert con.execute("SELECT * FROM bfa.ledger ORDER BY entry_id").fetchall() == ledger
    con.execute("CHECKPOINT")  # rows not yet checkpointed are uncompressed anyway
    compression = "SELECT DISTINCT compression FROM pragma_storage_info('bfa.ledger') WHERE column_name = 'metrics'"
    assert con.execute(compression + " AND segment_type <> 'VALIDITY'").fetchall() == [("Uncompressed",)]
    moves = con.execute("SELECT action, to_version FROM bfa.pointer_history ORDER BY change_id").fetchall()
    assert moves == [("publish", v[1]), ("publish", v[2]), ("publish", v[3]), ("rollback", v[2]), ("publish", v[4])]
    assert history.rollback_targets(con, "orders", day) == {"2025-01-02": v[2]}  # g2, not the rolled-back g3
    assert con.execute("SELECT DISTINCT columns FROM bfa.versions").fetchall() == [(["id", "d", "amount"],)]
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO bfa.published SELECT * FROM bfa.published")
    # rows say whether consumers read them: the pointer's version's rows, and the next publish goes by that
    assert con.execute("SELECT DISTINCT _bfa_version FROM bfa.orders WHERE _bfa_published").fetchall() == [(v[4],)]
    flag = "SELECT is_nullable FROM duckdb_columns() WHERE table_name = 'orders' AND column_name = '_bfa_published'"
    assert con.execute(flag).fetchall() == [(False,)]
    history.rollback(con, {"orders": {"2025-01-02": v[2]}}, "back to g2", "me")
    assert sorted(con.execute("SELECT amount FROM main.orders").fetchall()) == [(Decimal(n),) for n in (2, 3, 4)]
    con.close()


def test_a_catalog_with_keys_on_its_append_only_tables_is_copied_without_them(tmp_path):
    """The release before this one kept a PRIMARY KEY on bfa.versions, bfa.ledger and bfa.pointer_history
    (their ids come from sequences; DuckDB 1.5 rewrites a changed table's whole index at every checkpoint).
    Opening such a warehouse copies each table without its key, rows unchanged; the pointer keeps its key, and
    a publish and a rollback after that still give consumers what the test's own history says they must read."""
    path = str(tmp_path / "w.duckdb")
    con = wh.connect(path)
    spec, day = make_spec(columns={}, max_row_change=10.0), ["2025-01-02"]
    for gen in (1, 2):
        wap(con, spec, GOOD_SQL.replace("(i + 1)", f"(i + {gen})"), day, run_id=f"g{gen}")
    keys = {"versions": "version", "ledger": "entry_id", "pointer_history": "change_id"}
    before = {t: con.execute(f"SELECT * FROM bfa.{t} ORDER BY {k}").fetchall() for t, k in keys.items()}
    for table, key in keys.items():  # the previous release's DDL: the same, with the key
        (ddl,) = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()
        ddl = ddl.replace(f"CREATE TABLE bfa.{table}(", f"CREATE TABLE bfa.{table}_old(", 1)
        con.execute(re.sub(rf'("?{key}"?) BIGINT NOT NULL', r"\1 BIGINT PRIMARY KEY", ddl, count=1))
        con.execute(f"INSERT INTO bfa.{table}_old SELECT * FROM bfa.{table}")
        con.execute(f"DROP TABLE bfa.{table}")
        con.execute(f"ALTER TABLE bfa.{table}_old RENAME TO {table}")
    key_sql = "SELECT table_name FROM duckdb_constraints() WHERE schema_name = 'bfa' AND constraint_type='PRIMARY KEY'"
    assert {r[0] for r in con.execute(key_sql).fetchall()} >= set(keys)
    con.close()

    con = wh.connect(path)
    assert {t: con.execute(f"SELECT * FROM bfa.{t} ORDER BY {k}").fetchall() for t, k in keys.items()} == before
    assert {r[0] for r in con.execute(key_sql).fetchall()} == {"published", "branches"}
    wap(con, spec, GOOD_SQL.replace("(i + 1)", "(i + 3)"), day, run_id="g3")
    assert sorted(con.execute("SELECT amount FROM main.orders").fetchall()) == [(Decimal(n),) for n in (3, 4, 5)]
    history.rollback(con, {"orders": history.rollback_targets(con, "orders", day)}, "back to g2", "me")
    assert sorted(con.execute("SELECT amount FROM main.orders").fetchall()) == [(Decimal(n),) for n in (2, 3, 4)]
    con.close()


def test_a_dataframe_transform_gets_the_declared_types_when_read_in(con):
    """pandas has no DECIMAL: float64 cents become DECIMAL(18,2) exactly, as declared."""
    cents = [Decimal("0.10"), Decimal("0.20"), Decimal("912258.57")]

    def frame(ctx):
        days = pd.date_range(ctx.start, ctx.end, inclusive="left").date
        rows = [(f"{d:%Y%m%d}-{i}", d, float(c)) for d in days for i, c in enumerate(cents)]
        return pd.DataFrame(rows, columns=["id", "d", "amount"])

    assert wap(con, make_spec(), frame).published
    assert con.execute("SELECT DISTINCT typeof(amount) FROM orders").fetchall() == [("DECIMAL(18,2)",)]
    assert sorted(r[0] for r in con.execute("SELECT amount FROM orders").fetchall()) == sorted(cents * 3)

    def text(ctx):
        df = frame(ctx)
        return df.assign(amount=df["amount"].astype(str).where(df["id"] != "20250102-1", "n/a"))

    with pytest.raises(ValueError, match=r"^orders's transform: the DataFrame does not convert to the declared column "
                       r"types: Could not convert string \"n/a\" to DECIMAL\(18,2\)"):  # fmt: skip
        wap(con, make_spec(), text, run_id="r2")


def test_the_consumers_view_shows_exactly_the_published_versions_however_scattered(con, monkeypatch):
    """60 days loaded, then every third day republished by a run of its own, a held run and a run that is still
    staging in between, so the published versions scatter among the others: the view shows each day's own
    generation, and never the held or the staging rows, whether a publish finds the rows it changes by ranges
    of ids or by a semi-join. The view's definition does not list versions."""
    sql = """
    SELECT strftime(d, '%Y%m%d') AS id, d::DATE AS d, $gen::DECIMAL(18, 2) AS amount
    FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d)
    """
    spec = make_spec(rules=[Invariant("not_held", "SELECT * FROM candidate WHERE amount = 99")], max_row_change=9.0)
    days = [(dt.date(2025, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(60)]
    model = dict.fromkeys(days, 1)  # what consumers must read: day -> generation

    def run(keys, gen, outcome="publish"):
        report = write_audit_publish(con, spec, sql, keys, run_id=f"r{gen}-{keys[0]}", params={"gen": gen})
        assert report.outcome == outcome, report.failure_message()
        if outcome == "publish":
            model.update(dict.fromkeys(keys, gen))

    def view_rows():
        return dict(con.execute("SELECT d::VARCHAR, amount FROM main.orders ORDER BY d").fetchall())

    run(days, 1)
    for i, day in enumerate(days[::3]):
        run([day], 2 + i % 2)
        if i == 5:
            run([days[1]], 99, "hold")
            staging = wh.allocate(con, "orders", [(days[2], dt.date.fromisoformat(days[2]))], "still-staging", "1")
            row = "SELECT 'x' AS id, DATE '2025-01-03' AS d, 7::DECIMAL(18, 2) AS amount"
            con.execute(f"CREATE OR REPLACE TEMP VIEW staging AS {row}")
            wh.stage(con, staging, "d", "staging")
    assert view_rows() == {day: Decimal(gen) for day, gen in model.items()}
    definition = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'orders'").fetchall()[0][0]
    assert len(re.findall(r"\b\d+\b", definition.split(" WHERE ", 1)[1])) <= 2 * wh._MAX_RANGES, definition

    monkeypatch.setattr(wh, "_MAX_RANGES", 64)  # the rows the next publish changes found by ranges of ids
    run([days[0]], 4)
    assert view_rows() == {day: Decimal(gen) for day, gen in model.items()}


def test_a_change_of_what_consumers_read_is_written_into_the_file_at_once(tmp_path):
    """A publish, a rollback and a branch publish leave nothing in DuckDB's write-ahead log: the flags and rows
    they change are in the file's storage, which scans read at full speed (see catalog.settle). A held run
    changes nothing consumers read and leaves its bookkeeping in the log, so the probe sees a log when there is
    one."""
    db = str(tmp_path / "w.duckdb")

    def log_bytes():
        return os.path.getsize(db + ".wal") if os.path.exists(db + ".wal") else 0

    with wh.connect(db) as c:
        assert wap(c, make_spec(), GOOD_SQL).published and log_bytes() == 0
        bad = GOOD_SQL.replace("(i + 1)", "(i - 9)")
        assert wap(c, make_spec(), bad, run_id="r2").outcome == "hold" and log_bytes() > 0
        assert wap(c, make_spec(), GOOD_SQL.replace("(i + 1)", "(i + 2)"), run_id="r3").published
        assert log_bytes() == 0
        history.rollback(c, {"orders": history.rollback_targets(c, "orders", JAN_1_3)}, "back", "me")
        assert log_bytes() == 0 and c.execute("SELECT min(amount) FROM orders").fetchone() == (1,)
        fix = GOOD_SQL.replace("(i + 1)", "(i + 5)")
        assert wap(c, make_spec(), fix, run_id="r4", branch="fix").outcome == "branch" and log_bytes() > 0
        wh.publish_branch(c, "fix", "ana", None)
        assert log_bytes() == 0 and c.execute("SELECT min(amount) FROM orders").fetchone() == (5,)
