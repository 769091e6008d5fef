"""SIGKILL in the middle of a materialisation: every partition stays entirely old or becomes entirely new."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import duckdb
import pytest
from conftest import report

from backfill_assets import warehouse as wh

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "backfill-assets")
RANGE = ["--from", "2025-01-01", "--to", "2025-01-31"]
KILLS = int(os.environ.get("BACKFILL_ASSETS_CRASH_KILLS", "5"))

pytestmark = pytest.mark.slow


def _materialize(db, events_per_day, kill_after=None):
    env = {**os.environ, "BACKFILL_ASSETS_DB": str(db), "BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY": str(events_per_day)}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [CLI, "materialize", "-f", "definitions.py", "--select", "key:raw_events", *RANGE],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if kill_after is None:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-2000:]
        return
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def _published_state(db) -> dict[str, tuple[str, str]]:
    """partition -> (hash recomputed from the published rows, hash the ledger recorded); checks the invariants."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        pointers = con.execute(
            "SELECT partition_key, count(*) FROM bfa.published WHERE asset = 'raw_events' GROUP BY 1"
        ).fetchall()
        assert all(n == 1 for _, n in pointers), "a partition has more than one published version"
        published = wh.published_partitions(con, "raw_events")
        actual = wh.version_stats(con, "raw_events", [v for v, _, _ in published.values()])
        visible = con.execute("SELECT count(*) FROM raw_events").fetchall()[0][0]
        assert visible == sum(n for _, n, _ in published.values()), "the view shows rows of unpublished versions"
        keys = con.execute("SELECT count(*), count(DISTINCT delivery_id) FROM raw_events").fetchall()[0]
        assert keys[0] == keys[1], "duplicate grain keys are visible"
        return {k: (actual[v][1], h) for k, (v, _, h) in published.items()}
    finally:
        con.close()


def test_sigkill_mid_materialisation_leaves_each_partition_entirely_old_or_new(tmp_path):
    old_db, new_db, db = tmp_path / "old.duckdb", tmp_path / "new.duckdb", tmp_path / "crash.duckdb"
    _materialize(old_db, 4000)
    shutil.copy(old_db, new_db)
    started = time.monotonic()
    _materialize(new_db, 5000)
    full_run_s = time.monotonic() - started
    old = {k: h for k, (h, _) in _published_state(old_db).items()}
    new = {k: h for k, (h, _) in _published_state(new_db).items()}
    assert all(old[k] != new[k] for k in old)

    rng = random.Random(int(os.environ.get("BACKFILL_ASSETS_CRASH_SEED", "7")))
    violations: dict[int, list[str]] = defaultdict(list)  # kill -> what broke
    phases, rows_lost = [], 0
    for i in range(KILLS):
        shutil.copy(old_db, db)  # every kill interrupts the same old -> new backfill
        # Kill moments spread over the whole run (start-up, transform, staging, audit, publish), jittered.
        _materialize(db, 5000, kill_after=full_run_s * (i + rng.random()) / KILLS)
        try:
            state = _published_state(db)
        except AssertionError as e:
            violations[i].append(str(e))
            continue
        for key, (actual, recorded) in state.items():
            if actual != recorded:
                violations[i].append(f"{key}: published rows differ from what the ledger recorded")
            if actual not in (old[key], new[key]):
                violations[i].append(f"{key}: published data is neither the old nor the new version")
        phases.append(_phase(db, state, new))
        _materialize(db, 5000)  # the re-run converges on what an uninterrupted run publishes
        after = {k: h for k, (h, _) in _published_state(db).items()}
        if after != new:
            violations[i].append("the re-run did not converge on the uninterrupted run's content")
        rows_lost += sum(max(0, _rows(new[k]) - _rows(after.get(k, "0:"))) for k in new)
    summary = dict(Counter(phases))
    print(f"{KILLS} kills over a {full_run_s:.1f}s run; state left by each: {summary}")
    report(
        "crash",
        kills=KILLS,
        run_seconds=round(full_run_s, 2),
        phases=summary,
        rows_lost=rows_lost,
        violations=[f"kill {i}: {m}" for i, ms in violations.items() for m in ms],
        kills_violated=len(violations),
    )
    assert not violations
    assert rows_lost == 0
    # The kills are spread over the whole run, so some landed after rows were written or published.
    assert set(phases) - {"nothing staged"}, phases


def _rows(content_hash: str) -> int:
    return int(content_hash.split(":")[0] or 0)


def _phase(db, state, new) -> str:
    """What the killed run had reached: a label for the report."""
    if all(actual == new[k] for k, (actual, _) in state.items()):
        return "published"
    con = duckdb.connect(str(db), read_only=True)
    try:
        staged = con.execute("SELECT count(*) FROM bfa.versions WHERE status = 'staged'").fetchall()[0][0]
    finally:
        con.close()
    return "staged" if staged else "nothing staged"
