"""Publish, hold, approve, rollback, vacuum and crash in random orders (a hypothesis state machine). After every
step: each partition has at most one published version; the consumers' view shows exactly the rows the model
expects; every published version's rows match what the catalog recorded; nothing staged or held is visible."""

import getpass
import os
import shutil
import tempfile
from contextlib import contextmanager

import dagster as dg
import pytest
from conftest import report
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import backfill_assets as bfa
from backfill_assets import factory, history
from backfill_assets import warehouse as wh

KEYS = ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04"]
HELD = 1000  # generations from here on break the table's invariant and are held
SPEC = bfa.TableSpec(
    name="t",
    partitions=dg.DailyPartitionsDefinition(start_date=KEYS[0], end_date="2025-01-05"),
    partition_column="day",
    grain=["id"],
    columns={},
    code_version="1",
    metrics={"total": "sum(v)"},
    rules=[bfa.Invariant("small_values", f"SELECT * FROM candidate WHERE v >= {HELD * 10}")],
    max_row_change=10.0,
    keep_versions=1,
    keep_days=0,
)
# Generation g of a day: 2 + g % 3 rows, so row counts and contents change between generations.
TRANSFORM = """
SELECT d::DATE AS day, strftime(d, '%Y%m%d') || '-' || i AS id, $gen * 10 + i AS v
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), range(2 + $gen % 3) t(i)
"""
EXAMPLES = int(os.environ.get("BACKFILL_ASSETS_STATE_EXAMPLES", "40"))


class Crash(BaseException):
    """The process dies between the audit and the publish decision."""


@contextmanager
def crash_before_the_decision():
    def die(*args, **kwargs):
        raise Crash

    decide, wh.decide = wh.decide, die
    try:
        with pytest.raises(Crash):
            yield
    finally:
        wh.decide = decide


def expected_rows(key: str, gen: int) -> list[tuple]:
    day = key.replace("-", "")
    return [(key, f"{day}-{i}", gen * 10 + i) for i in range(2 + gen % 3)]


class History(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="bfa-state-")
        self.path = os.path.join(self.dir, "warehouse.duckdb")
        self.con = wh.connect(self.path)
        self.published: dict[str, int] = {}  # model: partition -> generation consumers read
        self.gen_of: dict[int, int] = {}  # version -> generation it was staged with
        self.next_gen = 1

    def teardown(self):
        self.con.close()
        shutil.rmtree(self.dir)

    def _run(self, keys: list[str], gen: int):
        report = bfa.write_audit_publish(self.con, SPEC, TRANSFORM, keys, run_id=f"g{gen}", params={"gen": gen})
        self.gen_of.update({v: gen for v, _, _ in report.partitions.values()})
        return report

    def _window(self, first: int, n: int) -> list[str]:
        return KEYS[first : first + n]

    @rule(first=st.integers(0, 3), n=st.integers(1, 4))
    def publish(self, first, n):
        keys, gen = self._window(first, n), self.next_gen
        self.next_gen += 1
        assert self._run(keys, gen).published
        self.published.update(dict.fromkeys(keys, gen))

    @rule(first=st.integers(0, 3), n=st.integers(1, 4))
    def hold(self, first, n):
        keys, gen = self._window(first, n), HELD + self.next_gen
        self.next_gen += 1
        report = self._run(keys, gen)
        assert report.outcome == "hold" and [o.name for o in report.failed] == ["reconciled"]

    @rule()
    def approve(self):
        held = history.held_versions(self.con, "t")  # held versions newer than what is published
        if not held:
            with pytest.raises(history.HistoryError, match="no held versions"):
                history.approve(self.con, "t", None, by="tester", why="accepted the deltas")
            return
        assert history.approve(self.con, "t", None, by="tester", why="accepted the deltas") == held
        assert all(self.gen_of[v] > HELD for v in held.values())
        self.published.update({k: self.gen_of[v] for k, v in held.items()})

    @precondition(lambda self: self.published)
    @rule(data=st.data())
    def rollback(self, data):
        key = data.draw(st.sampled_from(sorted(self.published)))
        try:
            targets = history.rollback_targets(self.con, "t", [key])
        except history.HistoryError as e:
            assert "no earlier version" in str(e) or "removed by retention" in str(e)
            return
        before = history.published_versions(self.con, "t")[key]
        assert targets[key] < before
        history.rollback(self.con, {"t": targets}, reason="test", actor="tester")
        self.published[key] = self.gen_of[targets[key]]

    @rule()
    def vacuum(self):
        candidates = history.vacuum_candidates(
            self.con, {"t": history.Retention(SPEC.keep_versions, SPEC.keep_days)}, set(), None
        )
        assert all(c["status"] in ("superseded", "rolled_back") for c in candidates)
        history.vacuum(self.con, candidates)

    @rule(first=st.integers(0, 3), n=st.integers(1, 4))
    def crash(self, first, n):
        with crash_before_the_decision():
            self._run(self._window(first, n), self.next_gen)
        self.next_gen += 1
        self.con.close()  # the process is gone; the next one opens the file again
        self.con = wh.connect(self.path)

    @invariant()
    def consumers_read_exactly_the_model(self):
        pointers = self.con.execute("SELECT partition_key, count(*) FROM bfa.published GROUP BY 1").fetchall()
        assert all(n == 1 for _, n in pointers)
        rows = (
            self.con.execute("SELECT day::VARCHAR, id, v FROM main.t ORDER BY id").fetchall() if self.published else []
        )
        expected = sorted((r for k, g in self.published.items() for r in expected_rows(k, g)), key=lambda r: r[1])
        assert rows == expected

    @invariant()
    def published_versions_match_the_catalog(self):
        published = wh.published_partitions(self.con, "t")
        assert sorted(published) == sorted(self.published)
        actual = wh.version_stats(self.con, "t", [v for v, _, _ in published.values()])
        assert all(actual[v] == (n, h) for v, n, h in published.values())


def test_history_state_machine():
    History.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    History.TestCase().runTest()
    report("state_machine", examples=EXAMPLES, steps=12)


def test_every_ledger_entry_says_who_when_and_why(tmp_path):
    con = wh.connect(str(tmp_path / "warehouse.duckdb"))

    def run(gen, **who):
        return bfa.write_audit_publish(con, SPEC, TRANSFORM, KEYS, run_id=f"g{gen}", params={"gen": gen}, **who)

    run(1, actor="alice", reason="backfill brief b1")
    run(2)  # a plain run: the OS user, and the run as the reason
    run(HELD + 3)
    history.approve(con, "t", None, by="carol", why="the new totals are right")
    history.rollback(con, {"t": history.rollback_targets(con, "t", KEYS[:1])}, reason="finance asked", actor="dave")
    candidates = history.vacuum_candidates(con, {"t": history.Retention(1, 0)}, set(), None)
    history.vacuum(con, candidates)
    with crash_before_the_decision():
        run(4)
    run(5)  # cleans up what the crashed run staged

    entries = con.execute("SELECT action, actor, recorded_at, reason FROM bfa.ledger ORDER BY entry_id").fetchall()
    con.close()
    assert [a for a, *_ in entries] == [
        "publish", "publish", "hold", "approve", "rollback", "vacuum", "abandon", "publish"
    ]  # fmt: skip
    assert all(actor and when and reason for _, actor, when, reason in entries)
    assert entries[0][1:4:2] == ("alice", "backfill brief b1")
    assert entries[1][3] == "run g2" and entries[1][1] == getpass.getuser()
    assert "check 'reconciled' failed" in entries[2][3]
    assert entries[3][1:4:2] == ("carol", "the new totals are right")
    assert entries[4][1:4:2] == ("dave", "finance asked")
    assert entries[5][3] == "retention" and entries[6][3] == "staged by a run that did not finish"


def test_a_runs_actor_and_reason_come_from_its_brief_its_backfill_or_the_run():
    def who(**tags):
        return factory._who_and_why(dg.DagsterRun(job_name="__ASSET_JOB", run_id="r1", tags=tags))

    brief = who(**{factory.BRIEF_TAG: "refunds-fix-2025q1", factory.OWNER_TAG: "team:finance-analytics"})
    assert brief == {"actor": "team:finance-analytics", "reason": "backfill brief refunds-fix-2025q1"}
    backfill = who(**{"dagster/backfill": "abc", "dagster/user": "ana"})
    assert backfill == {"actor": "ana", "reason": "Dagster backfill abc"}
    assert who() == {"actor": None, "reason": "run r1"}  # the ledger then records the OS user
