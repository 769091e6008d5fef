"""The performance benchmark's smoke mode: every measurement runs, and what we publish equals the bare SQL's
tables row for row (the benchmark compares like with like). Timings are the benchmark's business, not asserted."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAILY = {"raw_events", "events_clean", "sessions", "daily_active_users", "funnel_daily", "revenue_daily"}


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    summary = results["summary"]

    assert results["read"]["same_rows"] == dict.fromkeys(DAILY, True)
    assert summary["same_rows"] is True
    longest = results["scaling"]["7"]["ours"]
    assert longest["runs"] == 1
    assert set(longest["assets"]) == DAILY
    assert all(a["rows"] > 0 and a["transform_s"] > 0 and a["audit_s"] > 0 for a in longest["assets"].values())
    for asset in longest["assets"].values():  # the audit's breakdown: its one profile scan and each check
        assert {"unique_grain", "complete", "reconciled", "schema"} <= set(asset["checks_s"])
        assert 0 < asset["profile_s"] + sum(asset["checks_s"].values()) <= asset["audit_s"]
    assert set(summary["check_cost"]) == DAILY
    for scale in results["ranged"].values():
        assert (scale["per_partition"]["runs"], scale["ranged"]["runs"]) == (3, 1)
    assert set(summary["read_overhead"]) == {"one month filtered", "full aggregation", "join of two relations"}
    assert 0.05 < summary["rss_gib"] < 2
    assert results["machine"]["cores"] >= 1
    for line in ("1. overhead ours/bare at 7 days", "2. ranged vs per-partition", "5. peak RSS of the 7-day run"):
        assert line in done.stdout


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_out_of_memory_runs_once_more_from_an_empty_warehouse(tmp_path, monkeypatch):
    bench = _bench_module()
    db = tmp_path / "bare.duckdb"
    db.write_text("half a load")
    seen, answers = [], [(1, "", "_duckdb.OutOfMemoryException: Out of Memory Error"), (0, '{"seconds": [2.5]}\n', "")]

    def run(cmd, **kw):
        seen.append(db.exists())
        return subprocess.CompletedProcess(cmd, *answers[len(seen) - 1])

    monkeypatch.setattr(bench.subprocess, "run", run)
    assert bench.spawn("bare", db, days=3, events=10) == {"seconds": [2.5], "attempts": 2}
    assert seen == [True, False]

    seen.clear()
    answers[1] = (1, "", "_duckdb.OutOfMemoryException: again")
    with pytest.raises(SystemExit, match=r"worker bare \(3 days\) failed:\n_duckdb.OutOfMemoryException: again"):
        bench.spawn("bare", db, days=3, events=10)
    answers[0] = (1, "", "BinderError: no such table")  # any other failure stops at once
    seen.clear()
    with pytest.raises(SystemExit, match="BinderError"):
        bench.spawn("bare", db, days=3, events=10)
    assert len(seen) == 1
