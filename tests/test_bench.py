"""The performance benchmark's smoke mode: every measurement runs, and what we publish equals the bare SQL's
tables row for row (the benchmark compares like with like). Timings are the benchmark's business, not asserted."""

import json
import subprocess
import sys
from pathlib import Path

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
