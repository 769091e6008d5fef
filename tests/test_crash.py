"""SIGKILL in the middle of a materialisation: every partition stays entirely old or becomes entirely new."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

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

    shutil.copy(old_db, db)
    rng = random.Random(int(os.environ.get("BACKFILL_ASSETS_CRASH_SEED", "7")))
    phases = []
    for i in range(KILLS):
        # Kill moments spread over the whole run (start-up, transform, staging, audit, publish), jittered.
        _materialize(db, 5000, kill_after=full_run_s * (i + rng.random()) / KILLS)
        state = _published_state(db)
        for key, (actual, recorded) in state.items():
            assert actual == recorded, f"{key}: published rows differ from what the ledger recorded"
            assert actual in (old[key], new[key]), f"{key}: published data is neither the old nor the new version"
        phases.append(_phase(db, state, new))
    _materialize(db, 5000)
    assert {k: h for k, (h, _) in _published_state(db).items()} == new
    print(f"{KILLS} kills over a {full_run_s:.1f}s run; state left by each: {phases}")
    # The kills are spread over the whole run, so some landed after rows were written or published.
    assert set(phases) - {"nothing staged"}, phases


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
