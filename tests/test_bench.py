"""The performance benchmark's smoke mode: every measurement runs, and what we publish equals the bare SQL's
tables row for row (the benchmark compares like with like). Timings are the benchmark's business, not asserted."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]
DAILY = {"raw_events", "events_clean", "sessions", "daily_active_users", "funnel_daily", "revenue_daily"}


def smoke(script: str, out: Path, *extra: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """`script --smoke --out OUT *extra`, which must succeed; what it printed and the JSON it wrote."""
    done = subprocess.run(
        [sys.executable, script, "--smoke", "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_benchmark_smoke(tmp_path):
    out, work = tmp_path / "bench.json", tmp_path / "work"
    done, results = smoke("benchmarks/bench.py", out, "--workdir", str(work), timeout=600)
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
    _assert_branch_publish(results, work / "branch-publish.duckdb")
    _assert_branch_run(results, work / "branch-run-plain.duckdb", work / "branch-run-branch.duckdb")
    for line in ("7. publish of a branch of 8 assets x 7 partitions", "8. 7-day backfill in a branch"):
        assert line in done.stdout


def _assert_branch_publish(results: dict, db: Path) -> None:
    """Each timed publish flipped every staged pointer, and what consumers read is the last branch's rows."""
    publish = results["branch_publish"]
    assert (publish["assets"], publish["days"]) == (8, 7)
    assert publish["partitions"] == [56, 56] and len(publish["seconds"]) == 2
    assert all(s > 0 for s in publish["seconds"]) and results["summary"]["branch_publish_s"] > 0
    last = publish["branches"][-1]  # the publish timed statement by statement, after the timed ones
    assert publish["breakdown"]["partitions"] == 56 and publish["breakdown"]["statements"]
    with duckdb.connect(str(db), read_only=True) as con:
        states = con.execute("SELECT branch, state FROM bfa.branches ORDER BY branch").fetchall()
        assert states == [(b, "published") for b in sorted(publish["branches"])]
        per_asset = con.execute(
            "SELECT p.asset, count(*), count(*) FILTER (WHERE v.branch = ?), count(DISTINCT p.partition_key) "
            "FROM bfa.published p JOIN bfa.versions v USING (version) GROUP BY 1 ORDER BY 1",
            [last],
        ).fetchall()
        assert per_asset == [(f"branch_bench_{i}", 7, 7, 7) for i in range(1, 9)]
        for i in range(1, 9):  # the view shows the last branch's generation: 3 rows a day, amount gen * 100 + i
            rows = con.execute(f"SELECT count(*), count(DISTINCT day), min(amount) FROM main.branch_bench_{i}")
            assert rows.fetchone() == (21, 7, (len(publish["branches"]) + 1) * 100)
        # every earlier generation was displaced, none is still published
        assert con.execute(
            "SELECT count(*) FROM bfa.versions WHERE status = 'published' AND branch IS DISTINCT FROM ?", [last]
        ).fetchone() == (0,)


def _ordered_hash(con, table: str) -> tuple:
    """Rows and an md5 of every row of the consumers' view, sorted: equal tables, equal hashes."""
    return con.execute(
        f"SELECT count(*), md5(coalesce(string_agg(r, chr(10) ORDER BY r), '')) "
        f"FROM (SELECT CAST(t AS VARCHAR) AS r FROM main.{table} t)"
    ).fetchone()


def _assert_branch_run(results: dict, plain_db: Path, branch_db: Path) -> None:
    """The backfill in a branch published, once the branch did, the very rows of the same backfill without one."""
    run = results["branch_run"]
    assert run["order"] == ["plain", "branch"] and len(run["plain"]) == len(run["branch"]) == 1
    plain, branch = run["plain"][0], run["branch"][0]
    assert plain["outcomes"] == {a: ["publish", 7] for a in DAILY}
    assert branch["outcomes"] == {a: ["branch", 7] for a in DAILY}
    assert branch["partitions_published"] == 6 * 7 and plain["partitions_published"] == 0
    assert branch["seconds"] == pytest.approx(branch["run_s"] + branch["publish_s"])
    assert branch["publish_s"] > 0 and plain["publish_s"] == 0
    # then Dagster was told about every partition that moved, as `branch publish` does (timed apart)
    assert branch["partitions_told"] == 6 * 7 and branch["tell_dagster_s"] > 0 and plain["partitions_told"] == 0
    for side in (plain, branch):  # the run's seconds outside its assets' transforms and audits
        work = sum(a["transform_s"] + a["audit_s"] for a in side["assets"].values())
        assert side["outside_s"] == pytest.approx(side["run_s"] - work) and 0 < side["outside_s"] < side["run_s"]
    summary = results["summary"]
    assert summary["same_rows_branch"] is True and summary["branch_overhead"] > 0
    assert summary["branch_overhead_fastest"] > 0 and set(summary["branch_outside_s"]) == {"branch", "plain"}
    with duckdb.connect(str(plain_db), read_only=True) as p, duckdb.connect(str(branch_db), read_only=True) as b:
        for table in DAILY:
            rows, digest = _ordered_hash(b, table)
            assert rows > 0 and (rows, digest) == _ordered_hash(p, table), table
        from_branch = "SELECT count(*) FROM bfa.published p JOIN bfa.versions v USING (version) WHERE v.branch = ?"
        assert b.execute(from_branch, [branch["branch"]]).fetchone() == (6 * 7,)
        assert p.execute("SELECT count(*) FROM bfa.versions WHERE branch IS NOT NULL").fetchone() == (0,)


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


def test_partition_count_benchmark_smoke(tmp_path):
    """Every size builds its history and times publishes and reads; the benchmark itself refuses a view that
    disagrees with the plain table or holds other than 50 rows in each of its partitions."""
    done, results = smoke("benchmarks/partition_bench.py", tmp_path / "partitions.json", timeout=300)
    assert list(results["sizes"]) == ["50", "200"]
    for n, size in results["sizes"].items():
        assert (size["partitions"], size["rows"]) == (int(n), int(n) * 50)
        assert len(size["publish_runs_s"]) == 2 and all(s > 0 for s in size["publish_runs_s"])
        assert set(size["reads"]) == {"full aggregation", "one day filtered", "by hour"}
        assert all(r["view_s"] > 0 and r["plain_s"] > 0 for r in size["reads"].values())
    assert "worst read ratio" in done.stdout
