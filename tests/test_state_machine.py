"""Publish, hold, approve, parallel candidates and cutover, rollback (again and again), schema changes, vacuum
and crashes in random orders (a hypothesis state machine). The model decides by itself, from its own history,
what consumers must read: each partition's published generations form a stack (a publish, an approval or a
cutover pushes; a rollback pops), and retention removes what it says. After every step: the consumers' view
holds exactly the model's rows and columns; each partition has one pointer; every published version's recorded
hash matches its rows, and the same content always hashed the same."""

import dataclasses
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
PARALLEL = dataclasses.replace(SPEC, write_strategy="parallel_version")
# Generation g of a day: 2 + g % 3 rows, so row counts and contents change between generations.
SQL = """
SELECT d::DATE AS day, strftime(d, '%Y%m%d') || '-' || i AS id, $gen * 10 + i AS v
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), range(2 + $gen % 3) t(i)
"""
EXAMPLES = int(os.environ.get("BACKFILL_ASSETS_STATE_EXAMPLES", "40"))


def transform(ctx: bfa.TransformContext):
    rel = ctx.sql(SQL, gen=ctx.params["gen"])
    return rel.select("*, v * 2 AS w") if ctx.params.get("wide") else rel  # a run that adds a field


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


def expected_rows(key: str, gen: int, wide: bool) -> list[tuple]:
    day = key.replace("-", "")
    return [(key, f"{day}-{i}", gen * 10 + i, *((2 * (gen * 10 + i),) if wide else ())) for i in range(2 + gen % 3)]


@dataclasses.dataclass(frozen=True)
class Gen:
    """One run's content for one partition: `order` is the run's place in time (versions are allocated in it)."""

    order: int
    gen: int
    wide: bool


@dataclasses.dataclass
class Partition:
    """The model of one partition."""

    stack: list[Gen] = dataclasses.field(default_factory=list)  # published states, the current one last
    held: list[Gen] = dataclasses.field(default_factory=list)
    candidate: Gen | None = None
    kept: set[int] = dataclasses.field(default_factory=set)  # what retention ranks: ever published or superseded
    vacuumed: set[int] = dataclasses.field(default_factory=set)

    @property
    def current(self) -> Gen | None:
        return self.stack[-1] if self.stack else None

    def newer_than_current(self, gen: Gen | None) -> bool:
        return gen is not None and (self.current is None or gen.order > self.current.order)


class History(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="bfa-state-")
        self.path = os.path.join(self.dir, "warehouse.duckdb")
        self.con = wh.connect(self.path)
        self.model = {k: Partition() for k in KEYS}
        self.hashes: dict[tuple[str, int, bool], str] = {}  # (key, generation, wide) -> its content hash
        self.next_gen = 1
        self.order = 0

    def teardown(self):
        self.con.close()
        shutil.rmtree(self.dir)

    def _run(self, keys: list[str], gen: int, wide: bool = False, spec=SPEC) -> tuple:
        self.order += 1
        made = bfa.write_audit_publish(
            self.con, spec, transform, keys, run_id=f"r{self.order}", params={"gen": gen, "wide": wide}
        )
        for key, (_, _, content) in made.partitions.items():
            assert self.hashes.setdefault((key, gen, wide), content) == content  # same content, same hash
        return made, Gen(self.order, gen, wide)

    def _gen(self, reuse: bool) -> int:
        if reuse:
            return 1  # content seen before: its hash must not have changed
        self.next_gen += 1
        return self.next_gen

    @rule(first=st.integers(0, 3), n=st.integers(1, 4), wide=st.booleans(), reuse=st.booleans())
    def publish(self, first, n, wide, reuse):
        keys = KEYS[first : first + n]
        made, g = self._run(keys, self._gen(reuse), wide)
        assert made.published
        for k in keys:
            self._push(k, g)

    def _push(self, key: str, g: Gen):
        p = self.model[key]
        p.stack.append(g)
        p.kept.add(g.order)

    @rule(first=st.integers(0, 3), n=st.integers(1, 4), wide=st.booleans())
    def hold(self, first, n, wide):
        keys = KEYS[first : first + n]
        made, g = self._run(keys, HELD + self._gen(False), wide)
        assert made.outcome == "hold" and [o.name for o in made.failed] == ["reconciled"]
        for k in keys:
            self.model[k].held.append(g)

    @rule(first=st.integers(0, 3), n=st.integers(1, 4), wide=st.booleans())
    def parallel_candidate(self, first, n, wide):
        keys = KEYS[first : first + n]
        made, g = self._run(keys, self._gen(False), wide, spec=PARALLEL)
        assert made.outcome == "candidate"
        for k in keys:
            p = self.model[k]
            if p.candidate is not None:
                p.kept.add(p.candidate.order)  # a newer candidate supersedes it
            p.candidate = g

    def _decide(self, pick, decide, error: str):
        targets = {}
        for k, p in self.model.items():
            chosen = pick(p)
            if p.newer_than_current(chosen):
                targets[k] = chosen
        if not targets:
            with pytest.raises(history.HistoryError, match=error):
                decide()
            return
        decide()
        for k, g in targets.items():
            self._push(k, g)
        return targets

    @rule()
    def approve(self):
        def newest_held(p):
            newer = [g for g in p.held if p.newer_than_current(g)]
            return max(newer, key=lambda g: g.order) if newer else None

        done = self._decide(
            newest_held, lambda: history.approve(self.con, "t", None, by="tester", why="accepted"), "no held versions"
        )
        for k, g in (done or {}).items():
            self.model[k].held.remove(g)

    @rule()
    def cutover(self):
        done = self._decide(
            lambda p: p.candidate, lambda: history.cutover(self.con, "t", None, "compared"), "no parallel candidates"
        )
        for k in done or {}:
            self.model[k].candidate = None

    @precondition(lambda self: any(p.stack for p in self.model.values()))
    @rule(data=st.data())
    def rollback(self, data):
        key = data.draw(st.sampled_from(sorted(k for k, p in self.model.items() if p.stack)))
        p = self.model[key]
        if len(p.stack) < 2:
            with pytest.raises(history.HistoryError, match="no earlier version"):
                history.rollback_targets(self.con, "t", [key])
            return
        if p.stack[-2].order in p.vacuumed:
            with pytest.raises(history.HistoryError, match="removed by retention"):
                history.rollback_targets(self.con, "t", [key])
            return
        history.rollback(self.con, {"t": history.rollback_targets(self.con, "t", [key])}, reason="test", actor="me")
        p.stack.pop()

    @rule()
    def vacuum(self):
        candidates = history.vacuum_candidates(
            self.con, {"t": history.Retention(SPEC.keep_versions, SPEC.keep_days)}, set(), None
        )
        history.vacuum(self.con, candidates)
        for p in self.model.values():  # retention keeps the published version and the newest other one
            ranked = p.kept - p.vacuumed
            keep = {max(ranked)} if ranked else set()
            if p.current:
                keep.add(p.current.order)
            p.vacuumed |= ranked - keep

    @rule(first=st.integers(0, 3), n=st.integers(1, 4))
    def crash(self, first, n):
        with crash_before_the_decision():
            self._run(KEYS[first : first + n], self._gen(False))
        self.con.close()  # the process is gone; the next one opens the file again
        self.con = wh.connect(self.path)

    @invariant()
    def consumers_read_exactly_the_model(self):
        pointers = self.con.execute("SELECT partition_key, count(*) FROM bfa.published GROUP BY 1").fetchall()
        assert all(n == 1 for _, n in pointers)
        current = {k: p.current for k, p in self.model.items() if p.current}
        if not current:
            return
        wide = any(g.wide for g in current.values())
        columns = [c for c, *_ in self.con.execute("DESCRIBE main.t").fetchall()]
        assert columns == ["day", "id", "v", *(["w"] if wide else [])]
        rows = self.con.execute("SELECT day::VARCHAR, * EXCLUDE (day) FROM main.t ORDER BY id").fetchall()
        expected = [
            r + ((None,) if wide and not g.wide else ())
            for k, g in current.items()
            for r in expected_rows(k, g.gen, g.wide)
        ]
        assert rows == sorted(expected, key=lambda r: r[1])

    @invariant()
    def published_versions_match_the_catalog(self):
        published = wh.published_partitions(self.con, "t")
        assert sorted(published) == sorted(k for k, p in self.model.items() if p.current)
        actual = wh.version_stats(self.con, "t", [v for v, _, _ in published.values()])
        assert all(actual[v] == (n, h) for v, n, h in published.values())
        for key, (_, _, content) in published.items():
            g = self.model[key].current
            assert self.hashes[(key, g.gen, g.wide)] == content


@pytest.mark.parametrize("max_ranges", [None, 1], ids=["version-ranges", "semi-joins"])
def test_history_state_machine(monkeypatch, max_ranges):
    if max_ranges:  # versions are found by a semi-join once they form more ranges of ids than this
        monkeypatch.setattr(wh, "_MAX_RANGES", max_ranges)
    History.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    History.TestCase().runTest()
    report("state_machine", examples=EXAMPLES, steps=12, max_ranges=max_ranges or wh._MAX_RANGES)


def test_every_ledger_entry_says_who_when_and_why(tmp_path):
    con = wh.connect(str(tmp_path / "warehouse.duckdb"))

    def run(gen, **who):
        return bfa.write_audit_publish(con, SPEC, transform, KEYS, run_id=f"g{gen}", params={"gen": gen}, **who)

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
