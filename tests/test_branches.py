"""A backfill in a branch publishes as one (issue 20, first part): a small project of its own, a daily table and
a monthly table over it, written with the public engine. What consumers must read comes from this file's own
model (which generation of the daily amounts is published), never from the library."""

import json
import threading
from decimal import Decimal

import dagster as dg
import duckdb
import pytest

from backfill_assets import Reconcile, TableSpec, WarehouseError, warehouse, write_audit_publish
from backfill_assets.planning import Need

DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-03-01")
MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2025-01-01", end_date="2025-03-01")
JANUARY = [f"2025-01-{d:02d}" for d in range(1, 32)]

# Each day has 3 payments of gen * (day of month) + i cents.
DAILY_SQL = """
SELECT d::DATE AS day, strftime(d, '%Y%m%d') || '-' || i AS id,
       ($gen * extract(day FROM d) + i)::DECIMAL(18, 2) AS amount
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), range(3) t(i)
"""
MONTHLY_SQL = """
SELECT date_trunc('month', day)::DATE AS month, sum(amount)::DECIMAL(18, 2) AS total
FROM payments WHERE day >= $start AND day < $end GROUP BY 1
"""
payments = TableSpec(
    name="payments", partitions=DAILY, partition_column="day", grain=["id"], columns={}, code_version="1",
    metrics={"amount": "sum(amount)"}, max_row_change=10.0,
)  # fmt: skip
monthly = TableSpec(
    name="monthly", partitions=MONTHLY, partition_column="month", grain=["month"], columns={}, code_version="1",
    metrics={"total": "sum(total)"}, max_row_change=10.0,
    rules=[Reconcile("total_is_the_days", "total", "SELECT date_trunc('month', day)::DATE, sum(amount) FROM payments "
                     "WHERE day >= $start AND day < $end GROUP BY 1")],
)  # fmt: skip
BROKEN_MONTHLY = MONTHLY_SQL.replace("sum(amount)::", "(sum(amount) + 1)::")


def expected_january_total(gen: int) -> int:
    return sum(gen * day + i for day in range(1, 32) for i in range(3))


def month_inputs():
    return {"2025-01-01": [Need("payments", k, False) for k in JANUARY]}


def run(con, spec, sql, keys, gen=1, **kw):
    return write_audit_publish(con, spec, sql, keys, run_id=f"r-{spec.name}-{gen}", params={"gen": gen}, **kw)


def consumers_read(con) -> tuple:
    """What the consumers' views show, in one statement (one snapshot): payments' total, monthly's January total."""
    return con.execute("SELECT (SELECT sum(amount) FROM main.payments), (SELECT total FROM main.monthly)").fetchone()


@pytest.fixture
def con(tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as c:
        from backfill_assets import catalog

        catalog.ensure(c)
        assert run(c, payments, DAILY_SQL, JANUARY, gen=1).published
        assert run(c, monthly, MONTHLY_SQL, ["2025-01-01"], gen=1, inputs=month_inputs()).published
        yield c


def test_a_branch_changes_no_consumers_view_and_its_downstream_reads_the_branch(con):
    before = consumers_read(con)
    assert before == (expected_january_total(1), expected_january_total(1))
    assert run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="fix").outcome == "branch"
    report = run(con, monthly, MONTHLY_SQL, ["2025-01-01"], gen=2, inputs=month_inputs(), branch="fix")
    assert report.outcome == "branch", report.failure_message()
    assert consumers_read(con) == before  # nothing consumers read moved
    # monthly in the branch summed the branch's payments (generation 2), not the published ones
    assert report.metrics_after["2025-01-01"]["total"] == expected_january_total(2)
    assert report.metrics_before["2025-01-01"]["total"] == expected_january_total(1)
    published = warehouse.publish_branch(con, "fix", "ana", None)
    assert set(published) == {"payments", "monthly"}
    assert consumers_read(con) == (expected_january_total(2), expected_january_total(2))


def test_a_held_version_in_the_branch_refuses_the_publish_and_changes_nothing(con):
    before = consumers_read(con)
    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="fix")
    held = run(con, monthly, BROKEN_MONTHLY, ["2025-01-01"], gen=2, inputs=month_inputs(), branch="fix")
    assert held.outcome == "hold"
    with pytest.raises(WarehouseError, match=r"monthly 2025-01-01 is held or still running in the branch"):
        warehouse.publish_branch(con, "fix", "ana", None)
    assert consumers_read(con) == before
    # fixed and re-run in the branch: the new version replaces the held one, and the branch publishes as one
    fixed = run(con, monthly, MONTHLY_SQL, ["2025-01-01"], gen=3, inputs=month_inputs(), branch="fix")
    assert fixed.outcome == "branch"
    warehouse.publish_branch(con, "fix", "ana", None)
    assert consumers_read(con) == (expected_january_total(2), expected_january_total(2))


def test_a_partition_published_after_the_branch_staged_it_is_a_conflict(con):
    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="fix")
    assert run(con, payments, DAILY_SQL, ["2025-01-05"], gen=5).published  # someone else publishes one day
    after_other = consumers_read(con)
    with pytest.raises(WarehouseError, match=r"payments 2025-01-05 was published by something else after"):
        warehouse.publish_branch(con, "fix", "ana", None)
    assert consumers_read(con) == after_other
    run(con, payments, DAILY_SQL, ["2025-01-05"], gen=2, branch="fix")  # the way out: re-run it in the branch
    warehouse.publish_branch(con, "fix", "ana", None)
    assert consumers_read(con)[0] == expected_january_total(2)


def january_total(gens: dict[int, int]) -> int:
    """January's total when day d has generation gens.get(d, 1) (this file's model of the amounts)."""
    return sum(gens.get(day, 1) * day + i for day in range(1, 32) for i in range(3))


def test_a_branch_version_whose_input_changed_after_it_ran_is_a_conflict(con):
    """monthly staged in the branch read the published payments; one day is published anew outside the branch, and
    later a day is re-run in the branch: each time the month no longer adds up to what the branch would publish."""
    run(con, monthly, MONTHLY_SQL, ["2025-01-01"], gen=2, inputs=month_inputs(), branch="fix")
    assert run(con, payments, DAILY_SQL, ["2025-01-05"], gen=5).published  # someone else, outside the branch
    after_other = consumers_read(con)
    with pytest.raises(WarehouseError, match=r"monthly 2025-01-01 read payments 2025-01-05, changed since it ran"):
        warehouse.publish_branch(con, "fix", "ana", None)
    assert consumers_read(con) == after_other
    run(con, monthly, MONTHLY_SQL, ["2025-01-01"], gen=3, inputs=month_inputs(), branch="fix")  # the way out
    run(con, payments, DAILY_SQL, ["2025-01-07"], gen=7, branch="fix")  # the branch changes a day under the month
    with pytest.raises(WarehouseError, match=r"monthly 2025-01-01 read payments 2025-01-07, changed since it ran"):
        warehouse.publish_branch(con, "fix", "ana", None)
    run(con, monthly, MONTHLY_SQL, ["2025-01-01"], gen=4, inputs=month_inputs(), branch="fix")
    warehouse.publish_branch(con, "fix", "ana", None)
    assert consumers_read(con) == (january_total({5: 5, 7: 7}),) * 2


def test_only_the_reviewer_approves_and_a_metric_changing_branch_needs_the_approval(con):
    from backfill_assets import catalog

    catalog.open_branch(con, "repair", risk="metric-changing repair", reviewer="li@finance.example")
    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="repair")
    with pytest.raises(WarehouseError, match="must be approved by its reviewer li@finance.example"):
        warehouse.publish_branch(con, "repair", "ana", None)
    with pytest.raises(WarehouseError, match="only li@finance.example, the reviewer of branch repair, may approve"):
        warehouse.approve_branch(con, "repair", "ana", "looks fine to me")
    warehouse.approve_branch(con, "repair", "li@finance.example", "checked the deltas")
    run(con, payments, DAILY_SQL, ["2025-01-05"], gen=3, branch="repair")  # changed after the review
    with pytest.raises(WarehouseError, match="it changed after li@finance.example approved it"):
        warehouse.publish_branch(con, "repair", "ana", None)
    assert consumers_read(con)[0] == expected_january_total(1)
    warehouse.approve_branch(con, "repair", "li@finance.example", "checked the 5th again")
    warehouse.publish_branch(con, "repair", "ana", None)
    assert consumers_read(con)[0] == expected_january_total(2) + (3 - 2) * 5 * 3


def test_a_discarded_branch_leaves_nothing_behind(con):
    before = consumers_read(con)
    rows_before = con.execute("SELECT count(*) FROM bfa.payments").fetchone()[0]
    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="try")
    assert warehouse.discard_branch(con, "try", "ana", "just a try") == 93
    assert consumers_read(con) == before
    assert con.execute("SELECT count(*) FROM bfa.payments").fetchone()[0] == rows_before
    with pytest.raises(WarehouseError, match="branch try is discarded already"):
        warehouse.publish_branch(con, "try", "ana", None)
    # a held run whose stray rows fall outside its window leaves nothing behind either
    stray = DAILY_SQL + " UNION ALL SELECT DATE '2025-02-20', 'stray', 1"
    assert run(con, payments, stray, JANUARY[:2], gen=3, branch="try2").outcome == "hold"
    warehouse.discard_branch(con, "try2", "ana", None)
    assert con.execute("SELECT count(*) FROM bfa.payments").fetchone()[0] == rows_before


def test_a_reader_never_sees_one_table_of_the_branch_published_without_the_other(con, tmp_path):
    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="fix")
    run(con, monthly, MONTHLY_SQL, ["2025-01-01"], gen=2, inputs=month_inputs(), branch="fix")
    old, new = (expected_january_total(1),) * 2, (expected_january_total(2),) * 2
    seen, done = set(), threading.Event()

    def poll():
        reader = con.cursor()  # another connection of this process to the same file
        while not done.is_set():
            seen.add(consumers_read(reader))
        seen.add(consumers_read(reader))

    thread = threading.Thread(target=poll)
    thread.start()
    warehouse.publish_branch(con, "fix", "ana", None)
    done.set()
    thread.join()
    assert seen <= {old, new} and new in seen, seen


PROJECT = """
import os

import dagster as dg

import backfill_assets as bfa
from test_branches import DAILY_SQL, MONTHLY_SQL, monthly, payments

defs = dg.Definitions(
    assets=[
        bfa.derived_asset(payments, DAILY_SQL, params=lambda: {"gen": int(os.environ.get("GEN", "1"))}),
        bfa.derived_asset(monthly, MONTHLY_SQL, deps=["payments"]),
    ],
    resources={"warehouse": bfa.Warehouse()},
    executor=dg.in_process_executor,
)
"""


def cli_project(tmp_path, monkeypatch) -> None:
    """The project above as ./definitions.py, its warehouse under tmp_path, no Dagster instance."""
    (tmp_path / "definitions.py").write_text(PROJECT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "w.duckdb"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def test_the_cli_stages_a_backfill_in_a_branch_and_publishes_it_as_one(tmp_path, monkeypatch, capsys):
    from backfill_assets import cli

    cli_project(tmp_path, monkeypatch)
    january = ["--from", "2025-01-01", "--to", "2025-01-31"]
    assert cli.main(["materialize", *january]) == 0
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        before = consumers_read(con)
    monkeypatch.setenv("GEN", "2")
    assert cli.main(["materialize", *january, "--branch", "fix"]) == 0
    out = capsys.readouterr().out
    assert "staged in branch fix" in out, out
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert consumers_read(con) == before == (expected_january_total(1),) * 2
    assert cli.main(["branch", "show", "fix"]) == 0
    shown = capsys.readouterr().out
    assert "fix: open" in shown and "payments: 2025-01-01..2025-01-31 (31 partitions)" in shown, shown
    assert cli.main(["diff", "payments", "--branch", "fix", "--json"]) == 0  # published vs the branch, every day
    diffed = json.loads(capsys.readouterr().out)
    assert len(diffed["versions"]) == 31 and diffed["diff"]["matched"] == diffed["diff"]["partial_matches"] == 31 * 3
    (amount,) = diffed["metrics"]
    assert Decimal(str(amount["delta"])) == expected_january_total(2) - expected_january_total(1)
    assert cli.main(["notes", "--branch", "fix", "--format", "json", "--out", str(tmp_path / "notes")]) == 0
    note = json.loads(capsys.readouterr().out)
    assert "branch fix is open" in note["pending"] and len(note["assets"]["payments"]["published"]) == 31
    amounts = {
        (m["asset"], m["metric"]): (Decimal(str(m["before"])), Decimal(str(m["after"]))) for m in note["metrics"]
    }
    assert amounts[("payments", "amount")] == (expected_january_total(1), expected_january_total(2))
    assert amounts[("monthly", "total")] == (expected_january_total(1), expected_january_total(2))
    assert cli.main(["branch", "approve", "fix"]) == 2  # --by and --reason are required
    assert cli.main(["branch", "publish", "fix", "--by", "ana"]) == 0
    assert "published in one transaction" in capsys.readouterr().out
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert consumers_read(con) == (expected_january_total(2),) * 2
    assert cli.main(["branch", "publish", "fix"]) == 1
    assert "branch fix is published already" in capsys.readouterr().err


def test_a_brief_launched_into_a_branch_tags_every_run_with_it():
    from backfill_assets import launch, planning
    from backfill_assets.factory import BRANCH_TAG

    brief = {"id": "fix", "title": "t", "risk": "metric-changing repair", "owner": "ana", "reviewer": "li",
             "reason": "r", "rollback": "branch discard"}  # fmt: skip
    plan = planning.Plan({}, [])
    assert {"key": BRANCH_TAG, "value": "fix-1"} in launch.backfill_params(brief, plan, "fix-1")["tags"]
    assert BRANCH_TAG not in {t["key"] for t in launch.backfill_params(brief, plan)["tags"]}


def test_a_catalog_from_before_branches_gets_the_new_status_and_keeps_its_versions(tmp_path):
    from backfill_assets import catalog

    with duckdb.connect(str(tmp_path / "old.duckdb")) as c:
        catalog.ensure(c)
        assert run(c, payments, DAILY_SQL, JANUARY[:2]).published
        old_statuses = ", ".join(f"'{s}'" for s in catalog.STATUSES if s != "branched")
        c.execute("CREATE TABLE bfa.old AS SELECT * EXCLUDE (branch, base_version) FROM bfa.versions")
        c.execute("DROP TABLE bfa.versions")
        ddl = catalog._VERSIONS.format(name="versions", statuses=old_statuses)
        c.execute(ddl.replace("    branch VARCHAR,", "").replace(",\n    base_version BIGINT", ""))
        c.execute("INSERT INTO bfa.versions BY NAME SELECT * FROM bfa.old")
        c.execute("DROP TABLE bfa.old")
        rows = c.execute("SELECT version, status, content_hash FROM bfa.versions ORDER BY 1").fetchall()
        catalog.ensure(c)
        assert c.execute("SELECT version, status, content_hash FROM bfa.versions ORDER BY 1").fetchall() == rows
        assert run(c, payments, DAILY_SQL, JANUARY[:2], gen=2, branch="b").outcome == "branch"


def test_dagster_is_told_what_consumers_read_after_a_branch_publish_and_a_rollback(tmp_path, monkeypatch, capsys):
    """The latest materialization of a partition in Dagster names the version consumers read: the content hash
    the run that wrote it reported, after a branch publish and after a rollback (both made outside any run)."""
    from backfill_assets import cli, instance

    (tmp_path / "definitions.py").write_text(PROJECT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "w.duckdb"))
    instance.init(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    day, key = ["--from", "2025-01-05", "--to", "2025-01-05"], dg.AssetKey("payments")

    def latest(run_id=None):
        with dg.DagsterInstance.get() as inst:
            records = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=["2025-01-05"]), limit=20, ascending=False
            ).records
        mine = [r for r in records if run_id is None or r.run_id == run_id]
        return mine[0].asset_materialization.metadata["content_hash"].value, mine[0].run_id

    assert cli.main(["materialize", "--select", "payments", *day]) == 0
    first_hash, first_run = latest()
    monkeypatch.setenv("GEN", "2")
    assert cli.main(["materialize", "--select", "payments", *day, "--branch", "fix"]) == 0
    assert latest() == (first_hash, "")  # the branch's run materialized a candidate; Dagster shows the published
    with dg.DagsterInstance.get() as inst:
        staged = [r for r in inst.get_runs() if r.tags.get("backfill_assets/branch") == "fix"]
    branch_hash, _ = latest(staged[0].run_id)
    assert branch_hash != first_hash
    assert cli.main(["branch", "publish", "fix"]) == 0
    assert latest() == (branch_hash, "")  # a runless event: the branch's content, now published
    assert cli.main(["rollback", "payments", "--partition", "2025-01-05"]) == 0
    assert latest() == (first_hash, "")  # the first run's content is what consumers read again
    capsys.readouterr()


def test_a_published_branch_is_undone_as_one(con):
    from backfill_assets import history

    before = consumers_read(con)
    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="fix")
    run(con, monthly, MONTHLY_SQL, ["2025-01-01"], gen=2, inputs=month_inputs(), branch="fix")
    warehouse.publish_branch(con, "fix", "ana", None)
    assert consumers_read(con) == (expected_january_total(2),) * 2
    undone = history.undo_branch(con, "fix", "ana", "numbers questioned")
    assert {a: len(k) for a, k in undone.items()} == {"payments": 31, "monthly": 1}
    assert consumers_read(con) == before
    with pytest.raises(history.HistoryError, match="branch fix is undone, not published"):
        history.undo_branch(con, "fix", "ana", None)


def test_a_branch_changed_again_after_it_published_is_not_undone_half(con):
    from backfill_assets import history

    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="fix")
    warehouse.publish_branch(con, "fix", "ana", None)
    assert run(con, payments, DAILY_SQL, ["2025-01-09"], gen=7).published
    now = consumers_read(con)
    with pytest.raises(history.HistoryError, match="payments 2025-01-09 changed again since it published"):
        history.undo_branch(con, "fix", "ana", None)
    assert consumers_read(con) == now


def test_plan_says_which_open_branch_will_change_its_tables(tmp_path, monkeypatch, capsys):
    import json

    from backfill_assets import cli

    cli_project(tmp_path, monkeypatch)
    january = ["--from", "2025-01-01", "--to", "2025-01-31"]
    assert cli.main(["materialize", *january]) == 0
    assert cli.main(["materialize", "--select", "payments", "--from", "2025-01-03", "--to", "2025-01-04",
                     "--branch", "fix"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["plan", *january]) == 0
    out = capsys.readouterr().out
    assert "Open branch fix (review: none) will change: payments 2025-01-03..2025-01-04 (2)" in out, out
    assert cli.main(["plan", *january, "--json"]) == 0
    (branch,) = json.loads(capsys.readouterr().out)["open_branches"]
    assert branch["partitions"] == {"payments": ["2025-01-03", "2025-01-04"]}


def test_a_sigkill_during_a_branch_publish_leaves_all_or_nothing(tmp_path):
    """Kill `branch publish` at times spread over how long an unkilled one takes: after each kill, both tables
    are entirely the published state before or entirely the branch's."""
    import os
    import random
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from backfill_assets import catalog

    (tmp_path / "definitions.py").write_text(PROJECT)
    base = tmp_path / "base.duckdb"
    with duckdb.connect(str(base)) as c:
        catalog.ensure(c)
        run(c, payments, DAILY_SQL, JANUARY, gen=1)
        run(c, monthly, MONTHLY_SQL, ["2025-01-01"], gen=1, inputs=month_inputs())
        old = consumers_read(c)
        run(c, payments, DAILY_SQL, JANUARY, gen=2, branch="fix")
        run(c, monthly, MONTHLY_SQL, ["2025-01-01"], gen=2, inputs=month_inputs(), branch="fix")
    new = (expected_january_total(2),) * 2
    cli = str(Path(sys.executable).parent / "backfill-assets")

    def publish(db, kill_after=None) -> float:
        env = {**os.environ, "BACKFILL_ASSETS_DB": str(db), "PYTHONPATH": str(Path(__file__).parent)}
        env.pop("DAGSTER_HOME", None)
        started = time.monotonic()
        proc = subprocess.Popen([cli, "branch", "publish", "fix"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
        return time.monotonic() - started

    whole = publish(shutil.copy(base, tmp_path / "whole.duckdb"))
    rng = random.Random(20)
    for i in range(6):
        db = shutil.copy(base, tmp_path / f"killed{i}.duckdb")
        publish(db, kill_after=rng.uniform(0.5 * whole, whole))
        with duckdb.connect(str(db)) as c:  # a write connection: DuckDB replays its WAL, as the next run would
            seen = consumers_read(c)
            state = catalog.branch_info(c, "fix")["state"]
        assert (seen, state) in ((old, "open"), (new, "published")), (i, seen, state)
    assert consumers_read(duckdb.connect(str(tmp_path / "whole.duckdb"))) == new


def test_the_branch_decision_job_publishes_from_dagster_and_refuses_like_the_cli(tmp_path):
    """What the UI's launchpad runs: the same refusals (a metric-changing branch needs its reviewer), then one
    publish; Dagster's instance then has the branch's content as each partition's latest materialization."""
    from backfill_assets import Warehouse, branch_job, catalog

    db = tmp_path / "w.duckdb"
    with duckdb.connect(str(db)) as c:
        catalog.ensure(c)
        run(c, payments, DAILY_SQL, JANUARY, gen=1)
        catalog.open_branch(c, "repair", risk="metric-changing repair", reviewer="li")
        run(c, payments, DAILY_SQL, JANUARY, gen=2, branch="repair")
        staged = {k: v for k, (v, _, _) in catalog.branch_heads(c, "repair")["payments"].items()}
    job, resources = branch_job(), {"warehouse": Warehouse(database=str(db))}
    instance = dg.DagsterInstance.ephemeral()

    def decide(action, by, reason=""):
        config = {"ops": {"branch_decision_op": {"config": {"branch": "repair", "action": action, "by": by,
                                                            "reason": reason}}}}  # fmt: skip
        return job.execute_in_process(run_config=config, resources=resources, instance=instance, raise_on_error=False)

    refused = decide("publish", "ana")
    assert not refused.success
    failure = refused.failure_data_for_node("branch_decision_op").user_failure_data
    assert "must be approved by its reviewer li" in failure.description
    assert not decide("approve", "ana", "fine").success  # only the reviewer
    assert decide("approve", "li", "deltas checked").success
    assert decide("publish", "ana").success
    with duckdb.connect(str(db), read_only=True) as c:
        assert c.execute("SELECT sum(amount) FROM payments").fetchone()[0] == expected_january_total(2)
        hashes = {k: h for k, (v, _, h) in catalog.published_partitions(c, "payments").items()}
        assert {k: v for k, (v, _, _) in catalog.published_partitions(c, "payments").items()} == staged
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("payments"), asset_partitions=["2025-01-07"]), limit=1
    ).records[0]
    assert latest.asset_materialization.metadata["content_hash"].value == hashes["2025-01-07"]


BRIEF = """
id: fix
title: Amounts re-sent by the provider
reason: The provider re-sent January's amounts.
owner: ana
reviewer: li
risk: metric-changing repair
write_strategy: partition_overwrite
scope: {select: "key:payments+", from: 2025-01-01, to: 2025-01-31}
batch_size: 31
expected_changes: [{asset: payments, metric: amount, max_relative_change: 1.5}]
stakeholders: [nobody]
rollback: backfill-assets branch undo fix
"""


def test_a_try_on_a_slice_reports_and_extrapolates_and_changes_nothing(tmp_path, monkeypatch, capsys):
    import json

    from backfill_assets import catalog, cli

    (tmp_path / "definitions.py").write_text(PROJECT)
    (tmp_path / "backfills").mkdir()
    (tmp_path / "backfills" / "fix.yaml").write_text(BRIEF)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "w.duckdb"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert cli.main(["materialize", "--from", "2025-01-01", "--to", "2025-01-31"]) == 0
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        pointers = {a: catalog.published_partitions(con, a) for a in ("payments", "monthly")}
    monkeypatch.setenv("GEN", "2")
    capsys.readouterr()
    assert cli.main(["try", "backfills/fix.yaml", "--slice", "2025-01-01..2025-01-07", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # the JSON alone on stdout
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert {a: catalog.published_partitions(con, a) for a in pointers} == pointers  # no pointer moved
        assert catalog.branch_info(con, report["branch"])["state"] == "discarded"
    payments_try, monthly_try = report["assets"]
    assert (payments_try["asset"], payments_try["partitions"], payments_try["rows"]) == ("payments", 7, 21)
    assert (payments_try["full_partitions"], payments_try["estimated_rows"]) == (31, 93)  # 3 payments a day
    assert payments_try["rows_changed"] == 21  # every amount moves from generation 1 to 2

    def week(gen):  # the model: gen * day + i cents, for the first seven days
        return sum(gen * day + i for day in range(1, 8) for i in range(3))

    assert payments_try["metrics"]["amount"] == {"published": week(1), "branch": week(2)}
    # monthly read the branch's first week and the published rest of January
    assert monthly_try["metrics"]["total"]["branch"] == expected_january_total(1) - week(1) + week(2)
    assert report["passed"] and report["estimated_seconds"] > 0
    assert cli.main(["try", "backfills/fix.yaml", "--slice", "2024-12-01..2025-01-07"]) == 2


def test_a_rule_on_an_upstreams_recorded_metric_reads_the_branch(con):
    """bfa.published_metric in a branch run is the branch's: a monthly total reconciled against the daily table's
    recorded metric passes when both were rebuilt in the branch (against the published days it would not)."""
    by_metric = TableSpec(
        name="monthly_by_metric", partitions=MONTHLY, partition_column="month", grain=["month"], columns={},
        code_version="1", metrics={"total": "sum(total)"},
        rules=[Reconcile("total_is_the_recorded_days", "total",
                         "SELECT date_trunc('month', partition_date)::DATE, sum(value) FROM "
                         "bfa.published_metric('payments', 'amount', $start, $end) GROUP BY 1")],
    )  # fmt: skip
    assert run(con, by_metric, MONTHLY_SQL, ["2025-01-01"], inputs=month_inputs()).published
    run(con, payments, DAILY_SQL, JANUARY, gen=2, branch="fix")
    report = run(con, by_metric, MONTHLY_SQL, ["2025-01-01"], gen=2, inputs=month_inputs(), branch="fix")
    assert report.outcome == "branch", report.failure_message()
    assert report.metrics_after["2025-01-01"]["total"] == expected_january_total(2)
    # outside the branch the macro still reads what is published
    (published,) = con.execute(
        "SELECT sum(value) FROM bfa.published_metric('payments', 'amount', DATE '2025-01-01', DATE '2025-02-01')"
    ).fetchone()
    assert published == expected_january_total(1)


def notices(instance: dg.DagsterInstance, *path: str) -> list[str]:
    return [
        r.event_log_entry.asset_observation.description
        for r in instance.fetch_observations(dg.AssetKey(list(path)), limit=10).records
    ]


def test_materialize_into_a_new_branch_puts_a_maintenance_notice_on_everything_it_will_change(tmp_path, monkeypatch):
    """The command that opens a branch tells each asset of the blast radius in Dagster, once: the days, the month
    over them, the dashboard reading the month (this file's graph, not the library's planner, says which)."""
    from backfill_assets import cli, instance

    cli_project(tmp_path, monkeypatch)
    shown = "dataclasses.replace(monthly, consumers=[bfa.Consumer('Finance board', owners=['team:fin'])])"
    board = f"\nimport dataclasses\nshown = {shown}\n"
    project = PROJECT.replace("defs = dg.Definitions(", board + "defs = dg.Definitions(")
    project = project.replace("bfa.derived_asset(monthly,", "*bfa.consumer_specs([shown]), bfa.derived_asset(shown,")
    (tmp_path / "definitions.py").write_text(project)
    instance.init(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert cli.main(["materialize", "--from", "2025-01-01", "--to", "2025-01-31"]) == 0
    for day in ("2025-01-05", "2025-01-06"):  # the second run stages into the branch the first opened
        assert cli.main(["materialize", "--select", "payments", "--from", day, "--to", day, "--branch", "fix"]) == 0
    with dg.DagsterInstance.get() as inst:
        expected = {
            ("payments",): "payments 2025-01-05",
            ("monthly",): "monthly 2025-01-01",
            ("consumers", "finance_board"): "",
        }
        for path, change in expected.items():
            seen = notices(inst, *path)
            assert len(seen) == 1 and "staging in branch fix" in seen[0] and change in seen[0], (path, seen)


def test_the_run_that_opens_a_branch_tells_dagster_once(tmp_path):
    """A backfill launched from Dagster's UI with the branch tag opens the branch in its first run, which posts
    the notice (in a code location, on the whole blast radius; here, an in-process run, on its own asset)."""
    from backfill_assets import Warehouse, derived_asset

    instance = dg.DagsterInstance.ephemeral()
    resources = {"warehouse": Warehouse(database=str(tmp_path / "w.duckdb"))}
    for day in ("2025-01-05", "2025-01-06"):
        assert dg.materialize(
            [derived_asset(payments, DAILY_SQL, params={"gen": 1})], partition_key=day, instance=instance,
            resources=resources, tags={"backfill_assets/branch": "fix"},
        ).success  # fmt: skip
    seen = notices(instance, "payments")
    assert len(seen) == 1 and "staging in branch fix and will change payments 2025-01-05." in seen[0], seen


EVENTS_SQL = """
SELECT day, id FROM (
    SELECT (DATE '2025-01-05' + 10 * $moved)::DATE AS day, 'e1' AS id
    UNION ALL SELECT DATE '2025-01-03', 'e9' WHERE $dup = 1
    UNION ALL SELECT DATE '2025-01-12', 'e9' WHERE $dup = 1
    UNION ALL SELECT d::DATE, 'day-' || strftime(d, '%d')
    FROM range(DATE '2025-01-01', DATE '2025-01-21', INTERVAL 1 DAY) r(d)
) WHERE day >= $start AND day < $end
"""
events = TableSpec(
    name="events", partitions=DAILY, partition_column="day", grain=["id"], columns={}, code_version="1",
    max_row_change=10.0,
)  # fmt: skip
FIRST_TEN, SECOND_TEN = JANUARY[:10], JANUARY[10:20]


@pytest.mark.parametrize("moved, dup, passes", [(1, 0, True), (0, 1, False)], ids=["key-moved", "key-twice"])
def test_a_branch_run_checks_its_keys_against_the_branch_not_only_the_published_table(con, moved, dup, passes):
    """A key unique across partitions, written in two runs of one branch: moved from the 5th to the 15th by the
    fix, it is unique in what the branch publishes; added on the 3rd and on the 12th, it is a duplicate there."""
    assert write_audit_publish(
        con, events, EVENTS_SQL, FIRST_TEN + SECOND_TEN, run_id="p", params={"moved": 0, "dup": 0}
    ).published
    first = write_audit_publish(
        con, events, EVENTS_SQL, FIRST_TEN, run_id="b1", params={"moved": moved, "dup": dup}, branch="fix"
    )
    second = write_audit_publish(
        con, events, EVENTS_SQL, SECOND_TEN, run_id="b2", params={"moved": moved, "dup": dup}, branch="fix"
    )
    assert first.outcome == "branch"
    assert second.outcome == ("branch" if passes else "hold"), second.failure_message()
    if not passes:
        assert "e9" in str(next(o for o in second.outcomes if o.name == "unique_grain").failures)
