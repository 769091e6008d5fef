"""What our guarantees cost: the daily reference assets as write-audit-publish runs against the same SQL
run bare in DuckDB, side by side on one machine. Every measurement runs in its own process on its own
warehouse under a temporary directory. Prints a table and writes benchmarks/results/latest.json.

    python benchmarks/bench.py                 # 100k raw events/day; 31, 90 and 365 days (~45 min)
    python benchmarks/bench.py --smoke         # tiny: checks that every measurement runs (make test)
    python benchmarks/bench.py --only branch   # just 7 and 8 (~40 min; results in latest-branch.json)

Measured (targets from the performance issue):
1. overhead: one ranged run of every daily asset with every check and the ledger, against the same
   transformation SQL run bare in one connection (plain tables, delete + insert, no checks) -- once
   into an empty warehouse ("load") and again over the same range ("backfill"). Target <= 1.25.
2. ranged vs per-partition: the first days as one run against one run per partition, both with
   Dagster's in-process executor, at the demo scale of `make dev` (2,000 events/day) and at the
   benchmark's scale. Target >= 10.
3. check cost: audit time / transform time per asset, from the ledger. Target <= 0.35. Also for a one-day
   run into the longest table ("one day into N days"), where unique_grain reads the most published keys.
4. read overhead: typical queries on the published relations against plain tables of the same rows.
   Target <= 1.3.
5. memory: peak RSS of the longest run. Target <= 2 GiB.
6. scaling: seconds per day at each length; flat means linear.
7. branch publish: 8 synthetic daily tables x 365 partitions staged in one branch (a reviewed risk, approved),
   then warehouse.publish_branch alone, timed on fresh branches; median. Target <= 1 s.
8. backfill in a branch: the longest ranged run of the daily assets over a loaded warehouse in a branch (the
   run tag backfill_assets/branch) plus the branch's publish, against the same run without a branch, each
   side on its own copy of the warehouse, alternating plain, branch, branch, plain; means. Target <= 1.1.
"""

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = dt.date(2025, 1, 1)
DAILY = ["raw_events", "events_clean", "sessions", "daily_active_users", "funnel_daily", "revenue_daily"]
TARGETS = {
    "overhead": 1.25, "ranged_speedup": 10.0, "check_cost": 0.35, "read_overhead": 1.3, "rss_gib": 2.0,
    "branch_publish_s": 1.0, "branch_overhead": 1.1,
}  # fmt: skip
ONLY = ("branch", "branch-publish")
QUERIES = {
    "one month filtered": """
        SELECT event_type, count(*), sum(amount_usd) FROM events_clean
        WHERE event_date >= DATE '2025-03-01' AND event_date < DATE '2025-04-01' GROUP BY 1""",
    "full aggregation": """
        SELECT event_date, count(*), count(DISTINCT actor_key), sum(amount_usd) FROM events_clean GROUP BY 1""",
    "join of two relations": """
        SELECT s.session_date, count(*), sum(s.events), any_value(d.dau) FROM sessions s
        JOIN daily_active_users d ON d.activity_date = s.session_date GROUP BY 1""",
}


# --- workers: each runs in its own process, prints one JSON line ------------------------------------


def _days(n: int) -> list[str]:
    return [(START + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _ledger_figures(db: str, run_ids: list[str]) -> dict[str, dict]:
    """Per asset, summed over the runs' publish (or branch) entries: transform, audit, profile and per-check
    seconds, rows."""
    import duckdb

    assets: dict[str, dict] = {}
    with duckdb.connect(db, read_only=True) as con:
        entries = con.execute(
            "SELECT asset, params, checks, row_count FROM bfa.ledger WHERE run_id IN (SELECT unnest(?)) "
            "AND action IN ('publish', 'branch')",
            [run_ids],
        ).fetchall()
    for asset, params, checks, rows in entries:
        timings = json.loads(params)["timings_s"]
        a = assets.setdefault(asset, {"transform_s": 0.0, "audit_s": 0.0, "profile_s": 0.0, "rows": 0, "checks_s": {}})
        a["transform_s"] += timings["transform"]
        a["audit_s"] += timings["audit"]
        a["profile_s"] += timings["profile"]
        a["rows"] += rows
        for name, check in json.loads(checks).items():
            a["checks_s"][name] = a["checks_s"].get(name, 0.0) + check["seconds"]
    return assets


def worker_one_day(db: str, days: int) -> dict:
    """One ranged run of the daily assets for the middle day of a warehouse already holding `days` days."""
    import dagster as dg

    from definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    day = _days(days)[days // 2]
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        asset_selection=[dg.AssetKey(n) for n in DAILY],
        run_config=quiet,
        partition_key=day,
    )
    return {"seconds": [time.perf_counter() - started], "day": day, "assets": _ledger_figures(db, [result.run_id])}


def worker_ours(db: str, days: int, per_partition: bool) -> dict:
    """Both passes of the daily assets through Dagster in-process: one ranged run, or one run per day."""
    import dagster as dg

    from definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    keys = [dg.AssetKey(n) for n in DAILY]
    instance = dg.DagsterInstance.ephemeral()
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    partitions = _days(days)

    def run(**kw) -> str:
        result = job.execute_in_process(instance=instance, asset_selection=keys, run_config=quiet, **kw)
        return result.run_id

    passes, run_ids = [], []
    for _ in ("load", "backfill"):
        started = time.perf_counter()
        if per_partition:
            ids = [run(partition_key=p) for p in partitions]
        else:
            range_tags = {"dagster/asset_partition_range_start": partitions[0]}
            range_tags["dagster/asset_partition_range_end"] = partitions[-1]
            ids = [run(tags=range_tags)]
        passes.append(time.perf_counter() - started)
        run_ids.append(ids)
    assets = _ledger_figures(db, run_ids[-1])  # summed over the runs of the last pass
    return {"seconds": passes, "runs": len(run_ids[-1]), "assets": assets}


def _connect(db: str, read_only: bool = False):
    """The bare and read workers' connections: opened as ours are, so both sides run with the same settings."""
    from backfill_assets import warehouse

    return warehouse.connect(db, {"memory_limit": os.environ["BACKFILL_ASSETS_MEMORY_LIMIT"]}, read_only=read_only)


def worker_bare(db: str, days: int) -> dict:
    """The same SQL, twice, into plain tables of one connection: delete the window, insert it."""
    from backfill_assets import quote_ident, warehouse
    from backfill_assets.publish import TransformContext
    from product_analytics import source, tables

    pipeline = [  # the transforms and params build_assets() gives the daily assets
        (tables.raw_events_spec, source.raw_events, {"events_per_day": source.events_per_day()}),
        (tables.events_clean_spec, tables.EVENTS_CLEAN_SQL, {"salt": tables.pseudonym_salt()}),
        (tables.sessions_spec, tables.SESSIONS_SQL, {}),
        (tables.daily_active_users_spec, tables.DAU_SQL, {}),
        (tables.funnel_daily_spec, tables.FUNNEL_SQL, {}),
        (tables.revenue_daily_spec, tables.REVENUE_DAILY_SQL, {}),
    ]
    keys = _days(days)
    window = {"start": START, "end": START + dt.timedelta(days=days)}
    passes, assets = [], {}
    with _connect(db) as con:
        for _ in ("load", "backfill"):
            started = time.perf_counter()
            for spec, transform, params in pipeline:
                step_started = time.perf_counter()
                if callable(transform):
                    rel = transform(TransformContext(con, window["start"], window["end"], keys, params))
                else:
                    rel = con.sql(transform, params=warehouse.sql_params(transform, {**params, **window}))
                rel.create_view("_src", replace=True)
                table, column = quote_ident(spec.name), quote_ident(spec.partition_column)
                con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS FROM _src LIMIT 0")
                con.execute("BEGIN")
                con.execute(f"DELETE FROM {table} WHERE {column} >= $start AND {column} < $end", window)
                con.execute(f"INSERT INTO {table} FROM _src")
                con.execute("COMMIT")
                assets[spec.name] = {"seconds": time.perf_counter() - step_started}
            passes.append(time.perf_counter() - started)
    return {"seconds": passes, "assets": assets}


def worker_read(ours: str, bare: str, repeat: int) -> dict:
    """Each query on both warehouses, alternating, `repeat` times after a warm-up; medians."""
    sides = (("ours", ours), ("bare", bare))
    cons = {side: _connect(db, read_only=True) for side, db in sides}
    content = "SELECT count(*), sum(hash(*COLUMNS(*))) FROM {}"
    same = {name: len({c.execute(content.format(name)).fetchall()[0] for c in cons.values()}) == 1 for name in DAILY}
    out = {}
    for label, sql in QUERIES.items():
        times: dict[str, list[float]] = {"ours": [], "bare": []}
        for i in range(repeat + 1):
            for side, con in cons.items():
                started = time.perf_counter()
                con.execute(sql).fetchall()
                if i:
                    times[side].append(time.perf_counter() - started)
        out[label] = {side: statistics.median(t) for side, t in times.items()}
    return {"queries": out, "same_rows": same}


# The branch measurements (issue 20): synthetic tables for the pointer flip, the reference assets for the run.
PUBLISH_SQL = """
SELECT d::DATE AS day, strftime(d, '%Y%m%d') || '-' || i AS id, ($gen * 100 + i)::BIGINT AS amount
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d), range($rows) t(i)
"""
PUBLISH_ROWS = 3  # rows per partition: the measurement is about pointers, not rows
PUBLISH_PREFIX = "branch_bench_"
REVIEWER = "reviewer@bench.example"


def _publish_specs(n: int) -> list:
    import dagster as dg

    from backfill_assets import TableSpec

    daily = dg.DailyPartitionsDefinition(start_date=START.isoformat())
    return [
        TableSpec(
            name=f"{PUBLISH_PREFIX}{i}",
            partitions=daily,
            partition_column="day",
            grain=["id"],
            columns={},
            code_version="1",
            metrics={"amount": "sum(amount)"},
        )
        for i in range(1, n + 1)
    ]


class _TimedConnection:
    """A connection that adds up each statement's seconds by the function that issued it and the statement's
    start: where a publish spends its time (the fetch of a small result is left out)."""

    def __init__(self, con) -> None:
        self._con = con
        self.statements: dict[str, dict] = {}

    def execute(self, sql: str, *args):
        caller = sys._getframe(1).f_code
        statement = re.sub(r'"[^"]*"', '"..."', " ".join(sql.split()))  # one label for every table's view
        label = f"{Path(caller.co_filename).stem}.{caller.co_name}: {statement[:70]}"
        started = time.perf_counter()
        try:
            return self._con.execute(sql, *args)
        finally:
            s = self.statements.setdefault(label, {"seconds": 0.0, "calls": 0})
            s["seconds"] += time.perf_counter() - started
            s["calls"] += 1

    def __getattr__(self, name: str):
        return getattr(self._con, name)


def worker_publish(db: str, assets: int, days: int, repeat: int) -> dict:
    """`assets` synthetic daily tables published for `days` days, then `repeat` times: a fresh branch (a
    reviewed risk, approved) with a new version of every partition of every table, and its publish timed
    alone. One more publish runs with every statement timed, for the breakdown."""
    from backfill_assets import catalog, warehouse, write_audit_publish

    specs, keys = _publish_specs(assets), _days(days)
    published, seconds, stage_s, breakdown = [], [], [], {}
    with _connect(db) as con:

        def stage(gen: int, branch: str | None) -> None:
            for spec in specs:
                params = {"gen": gen, "rows": PUBLISH_ROWS}
                report = write_audit_publish(
                    con, spec, PUBLISH_SQL, keys, run_id=f"{spec.name}-{gen}", params=params, branch=branch
                )
                if report.outcome != ("branch" if branch else "publish"):
                    raise RuntimeError(f"{spec.name}: {report.outcome}: {report.failure_message()}")

        stage(1, None)  # what the branches replace: every partition has a published version
        for gen in range(2, repeat + 3):
            branch = f"bench-{gen - 1}"
            catalog.open_branch(con, branch, title="benchmark", risk="metric-changing repair", reviewer=REVIEWER)
            started = time.perf_counter()
            stage(gen, branch)
            warehouse.approve_branch(con, branch, REVIEWER, "benchmark")
            stage_s.append(time.perf_counter() - started)
            timed = _TimedConnection(con) if gen == repeat + 2 else con
            started = time.perf_counter()
            targets = warehouse.publish_branch(timed, branch, "bench", None)
            elapsed = time.perf_counter() - started
            if timed is con:
                seconds.append(elapsed)
                published.append(sum(len(parts) for parts in targets.values()))
            else:
                top = sorted(timed.statements.items(), key=lambda kv: -kv[1]["seconds"])
                breakdown = {"seconds": elapsed, "partitions": sum(map(len, targets.values())), "statements": dict(top)}
    return {
        "assets": assets, "days": days, "seconds": seconds, "partitions": published, "stage_s": stage_s,
        "branches": [f"bench-{i}" for i in range(1, repeat + 2)], "breakdown": breakdown,
    }  # fmt: skip


def _fingerprint(db: str) -> dict[str, list]:
    """Rows and an order-independent hash of what consumers read in each daily table."""
    with _connect(db, read_only=True) as con:
        sql = "SELECT count(*), sum(hash(*COLUMNS(*)))::VARCHAR FROM main.{}"
        return {name: list(con.execute(sql.format(name)).fetchone()) for name in DAILY}


def worker_pass(db: str, days: int, branch: str | None) -> dict:
    """One ranged run of the daily assets over `days` through Dagster in-process, as worker_ours's passes; in
    `branch` (the run tag), then that branch's publish, timed apart, and what `branch publish` does next, telling
    Dagster about each partition that moved (timed apart again, not part of the comparison's target)."""
    import dagster as dg

    from backfill_assets import catalog, warehouse
    from backfill_assets.factory import BRANCH_TAG, report_pointer_changes
    from definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    partitions = _days(days)
    tags = {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[-1]}
    if branch:
        tags[BRANCH_TAG] = branch
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(n) for n in DAILY], run_config=quiet, tags=tags
    )
    run_s = time.perf_counter() - started
    publish_s = tell_s = 0.0
    published = told = 0
    with _connect(db) as con:
        outcomes = {a: [action, n] for a, action, n in catalog.run_outcomes(con, [result.run_id])}
        if branch:
            started = time.perf_counter()
            targets = warehouse.publish_branch(con, branch, "bench", None)
            publish_s = time.perf_counter() - started
            published = sum(len(parts) for parts in targets.values())
            started = time.perf_counter()
            told = report_pointer_changes(instance, con, targets, f"branch {branch} publish", None)
            tell_s = time.perf_counter() - started
    assets = _ledger_figures(db, [result.run_id])
    return {
        "seconds": run_s + publish_s, "run_s": run_s, "publish_s": publish_s, "partitions_published": published,
        "tell_dagster_s": tell_s, "partitions_told": told, "branch": branch, "outcomes": outcomes, "assets": assets,
        # the run's time outside its assets' transforms and audits: Dagster's events, the catalog, in a branch
        # its overlays, recorded reads and the partitions restated to Dagster; far less noisy than the whole run
        "outside_s": run_s - sum(a["transform_s"] + a["audit_s"] for a in assets.values()),
        "content": _fingerprint(db),
    }  # fmt: skip


def _worker_main(args: argparse.Namespace) -> None:
    if args.worker == "ours":
        result = worker_ours(args.db, args.days, per_partition=False)
    elif args.worker == "per-partition":
        result = worker_ours(args.db, args.days, per_partition=True)
    elif args.worker == "one-day":
        result = worker_one_day(args.db, args.days)
    elif args.worker == "bare":
        result = worker_bare(args.db, args.days)
    elif args.worker == "publish":
        result = worker_publish(args.db, args.assets, args.days, args.repeat)
    elif args.worker == "pass":
        result = worker_pass(args.db, args.days, args.branch)
    else:
        result = worker_read(args.db, args.bare_db, args.repeat)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, default=str))


# --- the driver -----------------------------------------------------------------------------------


def spawn(kind: str, db: Path, *, days: int = 0, events: int, extra: tuple[str, ...] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}  # ephemeral instance
    env.update(BACKFILL_ASSETS_DB=str(db), BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY=str(events))
    cmd = [sys.executable, __file__, "--worker", kind, "--db", str(db), "--days", str(days), *extra]
    for attempt in (1, 2):
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)  # noqa: S603 -- our script
        if not proc.returncode:
            return {**json.loads(proc.stdout.strip().splitlines()[-1]), "attempts": attempt}
        if attempt == 1 and "OutOfMemoryException" in proc.stderr:  # near the limit: it passes or fails by chance
            print(f"benchmark worker {kind} ({days} days) ran out of memory; running it once more", file=sys.stderr)
            if kind not in ("read", "pass"):  # the builders start again from an empty warehouse; a pass (a
                # backfill over a loaded one, which abandons the dead run's versions) runs over the same one
                for path in (db, db.with_name(db.name + ".wal")):
                    path.unlink(missing_ok=True)
            continue
        sys.exit(f"benchmark worker {kind} ({days} days) failed:\n{proc.stderr[-3000:]}")


def machine() -> dict:
    import duckdb

    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))

    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "platform": platform.platform(),
    }


def measure(events: int, lengths: list[int], ranged_days: int, ranged_events: int, repeat: int, tmp: Path) -> dict:
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    results: dict = {"events_per_day": events, "scaling": {}}
    for days in lengths:
        say(f"{days} days x {events:,} events/day: ours ...")
        ours = spawn("ours", tmp / f"ours-{days}.duckdb", days=days, events=events)
        say(f"{days} days x {events:,} events/day: bare ...")
        bare = spawn("bare", tmp / f"bare-{days}.duckdb", days=days, events=events)
        results["scaling"][days] = {"ours": ours, "bare": bare}
    longest = max(lengths)
    results["ranged"] = {}
    for n in sorted({ranged_events, events}):
        say(f"{ranged_days} days x {n:,} events/day, one run per partition and one ranged run ...")
        results["ranged"][n] = {
            "per_partition": spawn("per-partition", tmp / f"per-partition-{n}.duckdb", days=ranged_days, events=n),
            "ranged": spawn("ours", tmp / f"ranged-{n}.duckdb", days=ranged_days, events=n),
        }
    say("read queries ...")
    extra = ("--bare-db", str(tmp / f"bare-{longest}.duckdb"), "--repeat", str(repeat))
    results["read"] = spawn("read", tmp / f"ours-{longest}.duckdb", events=events, extra=extra)
    say(f"one day into the {longest}-day warehouse ...")  # after the reads: it adds a version of that day
    results["one_day"] = spawn("one-day", tmp / f"ours-{longest}.duckdb", days=longest, events=events)
    return results


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure_publish(assets: int, days: int, repeat: int, tmp: Path) -> dict:
    _say(f"publish of a branch of {assets} assets x {days} partitions, {repeat} times ...")
    extra = ("--assets", str(assets), "--repeat", str(repeat))
    return spawn("publish", tmp / "branch-publish.duckdb", days=days, events=100, extra=extra)


def _copy_warehouse(source: Path, target: Path) -> None:
    for suffix in ("", ".wal"):  # a closed warehouse has no WAL; copied if one is left
        src = source.with_name(source.name + suffix)
        if src.exists():
            shutil.copyfile(src, target.with_name(target.name + suffix))


def measure_branch_run(events: int, days: int, pairs: int, tmp: Path, base: Path | None = None) -> dict:
    """The `days`-day backfill of the daily assets over a loaded warehouse, without a branch and in one (and
    then its publish), `pairs` times each, alternating (plain, branch, branch, plain, ...) so that drift and
    noise weigh on both; each side on its own copy of the same warehouse (`base`, else one loaded here)."""
    plain_db, branch_db = tmp / "branch-run-plain.duckdb", tmp / "branch-run-branch.duckdb"
    load = None
    if base is not None and base.exists():
        _copy_warehouse(base, plain_db)
    else:
        _say(f"{days} days x {events:,} events/day: loading the warehouse the branch passes run over ...")
        load = spawn("pass", plain_db, days=days, events=events)
    _copy_warehouse(plain_db, branch_db)
    order = [side for i in range(pairs) for side in (("plain", "branch") if i % 2 == 0 else ("branch", "plain"))]
    passes: dict[str, list] = {"plain": [], "branch": []}
    for i, side in enumerate(order, 1):
        _say(f"{days} days x {events:,} events/day: backfill {i} of {len(order)}, {side} ...")
        extra = ("--branch", f"bench-{i}") if side == "branch" else ()
        db = branch_db if side == "branch" else plain_db
        passes[side].append(spawn("pass", db, days=days, events=events, extra=extra))
    return {"days": days, "events_per_day": events, "order": order, "load": load, **passes}


def summarise(results: dict) -> dict:
    """The ratios the targets are about, from the raw figures (of the measurements that ran)."""
    summary = summarise_branch(results)
    if "scaling" not in results:  # --only
        return summary
    return {**_summarise_main(results), **summary}


SIDES = ("branch", "plain")


def _mean(passes: list[dict], key: str) -> float:
    return statistics.fmean(p[key] for p in passes)


def summarise_branch(results: dict) -> dict:
    out: dict = {}
    if "branch_publish" in results:
        pub = results["branch_publish"]
        out["branch_publish_s"] = statistics.median(pub["seconds"])
        out["branch_publish_partitions"] = min(pub["partitions"])
    if "branch_run" in results:
        run = results["branch_run"]
        plain, branch = run["plain"], run["branch"]
        out["branch_overhead"] = _mean(branch, "seconds") / _mean(plain, "seconds")
        out["branch_overhead_run"] = _mean(branch, "run_s") / _mean(plain, "run_s")
        out["branch_run_publish_s"] = _mean(branch, "publish_s")
        out["branch_overhead_fastest"] = min(p["seconds"] for p in branch) / min(p["seconds"] for p in plain)
        out["branch_outside_s"] = {side: _mean(run[side], "outside_s") for side in SIDES}
        out["branch_tell_dagster_s"] = _mean(branch, "tell_dagster_s")
        out["same_rows_branch"] = all(p["content"] == plain[0]["content"] for p in plain + branch)
    return out


def _summarise_main(results: dict) -> dict:
    scaling = results["scaling"]
    longest = scaling[max(scaling)]
    ours, bare = longest["ours"], longest["bare"]
    read = results["read"]["queries"]
    ranged = results["ranged"]
    return {
        "overhead_load": ours["seconds"][0] / bare["seconds"][0],
        "overhead_backfill": ours["seconds"][1] / bare["seconds"][1],
        "ranged_speedup": {n: r["per_partition"]["seconds"][1] / r["ranged"]["seconds"][1] for n, r in ranged.items()},
        "check_cost": {a: v["audit_s"] / v["transform_s"] for a, v in ours["assets"].items()},
        "check_cost_one_day": {a: v["audit_s"] / v["transform_s"] for a, v in results["one_day"]["assets"].items()},
        "read_overhead": {q: t["ours"] / t["bare"] for q, t in read.items()},
        "rss_gib": ours["peak_rss_mib"] / 1024,
        "seconds_per_day": {d: {s: r[s]["seconds"][1] / d for s in ("ours", "bare")} for d, r in scaling.items()},
        "same_rows": all(results["read"]["same_rows"].values()),
    }


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(results: dict, summary: dict) -> str:
    if "scaling" not in results:  # --only
        m = results["machine"]
        head = f"Branch measurements, on {m['cores']} cores / {m['memory_gib']} GiB\n\n"
        return head + report_branch(results, summary)
    return _report_main(results, summary) + "\n" + report_branch(results, summary)


def report_branch(results: dict, summary: dict) -> str:
    t, lines = TARGETS, []
    if "branch_publish" in results:
        pub, s = results["branch_publish"], summary["branch_publish_s"]
        runs = pub["seconds"]
        lines.append(
            f"7. publish of a branch of {pub['assets']} assets x {pub['days']} partitions "
            f"({summary['branch_publish_partitions']:,} pointers): median {s:.2f}s of {len(runs)} "
            f"({min(runs):.2f}-{max(runs):.2f}s) (target <= {t['branch_publish_s']}s) "
            f"{verdict(s <= t['branch_publish_s'])}"
        )
        if s > t["branch_publish_s"]:  # where its time went: the statements of one more publish, timed
            b = pub["breakdown"]
            sql = sum(v["seconds"] for v in b["statements"].values())
            lines.append(f"     statements {sql:.2f}s of {b['seconds']:.2f}s; the slowest:")
            for label, v in list(b["statements"].items())[:6]:
                lines.append(f"       {v['seconds']:>6.2f}s {v['calls']:>4}x {label}")
    if "branch_run" in results:
        run, r = results["branch_run"], summary["branch_overhead"]
        branch, plain = ({k: _mean(run[side], k) for k in ("seconds", "run_s", "publish_s")} for side in SIDES)
        seen = dict.fromkeys(SIDES, 0)
        passes = []
        for side in run["order"]:
            passes.append(f"{side} {run[side][seen[side]]['seconds']:.1f}s")
            seen[side] += 1
        rss = {side: max(p["peak_rss_mib"] for p in run[side]) / 1024 for side in SIDES}
        first = run["branch"][0]
        lines += [
            f"8. {run['days']}-day backfill in a branch (with its publish) / without one: {r:.2f} "
            f"(target <= {t['branch_overhead']}) {verdict(r <= t['branch_overhead'])}",
            f"     branch {branch['seconds']:.1f}s = run {branch['run_s']:.1f}s + publish {branch['publish_s']:.2f}s, "
            f"plain {plain['seconds']:.1f}s: mean of {len(run['plain'])} each, in this order: {', '.join(passes)}",
            f"     the run alone {summary['branch_overhead_run']:.2f}; the fastest pass of each "
            f"{summary['branch_overhead_fastest']:.2f}; the publish of its {first['partitions_published']:,} "
            f"partitions {summary['branch_run_publish_s']:.2f}s; peak RSS branch {rss['branch']:.2f} GiB, plain "
            f"{rss['plain']:.2f} GiB",
            f"     outside transforms and audits (Dagster's events, the catalog; a branch's overlays, reads and "
            f"partitions restated to Dagster): branch {summary['branch_outside_s']['branch']:.1f}s, plain "
            f"{summary['branch_outside_s']['plain']:.1f}s",
            f"     then telling Dagster about the {first['partitions_told']:,} partitions published, as "
            f"`branch publish` does (in-memory instance, not in the ratio): {summary['branch_tell_dagster_s']:.1f}s",
        ]
        if r > t["branch_overhead"]:  # where the branch run spent more: transform and audit per asset
            for asset in run["plain"][0]["assets"]:
                b, p = ({k: _mean([x["assets"][asset] for x in run[side]], k) for k in ("transform_s", "audit_s")}
                        for side in SIDES)  # fmt: skip
                lines.append(
                    f"       {asset:<20} transform {b['transform_s']:.2f}s vs {p['transform_s']:.2f}s, "
                    f"audit {b['audit_s']:.2f}s vs {p['audit_s']:.2f}s"
                )
        lines.append(f"   same published rows, branch and plain: {'yes' if summary['same_rows_branch'] else 'NO'}")
    return "\n".join(lines)


def _report_main(results: dict, summary: dict) -> str:
    scaling = results["scaling"]
    longest = max(scaling)
    per_day = summary["seconds_per_day"].items()
    lines = [
        f"Daily reference assets ({len(DAILY)}), {results['events_per_day']:,} raw events/day, "
        f"on {results['machine']['cores']} cores / {results['machine']['memory_gib']} GiB",
        "",
        f"{'days':>5} {'ours load':>10} {'bare load':>10} {'ratio':>6} {'ours bf':>9} {'bare bf':>9} {'ratio':>6}"
        f" {'s/day ours':>11} {'peak RSS':>9}",
    ]
    for days, r in scaling.items():
        o, b = r["ours"]["seconds"], r["bare"]["seconds"]
        lines.append(
            f"{days:>5} {o[0]:>9.1f}s {b[0]:>9.1f}s {o[0] / b[0]:>6.2f} {o[1]:>8.1f}s {b[1]:>8.1f}s {o[1] / b[1]:>6.2f}"
            f" {o[1] / days:>10.3f}s {r['ours']['peak_rss_mib']:>6.0f}MiB"
        )
    t = TARGETS
    lines += [
        "",
        f"1. overhead ours/bare at {longest} days: load {summary['overhead_load']:.2f}, "
        f"backfill {summary['overhead_backfill']:.2f} (target <= {t['overhead']}) "
        f"{verdict(max(summary['overhead_load'], summary['overhead_backfill']) <= t['overhead'])}",
        f"2. ranged vs per-partition (target >= {t['ranged_speedup']:.0f}x):",
    ]
    for n, r in results["ranged"].items():
        pp, speedup = r["per_partition"], summary["ranged_speedup"][n]
        lines.append(
            f"     {n:>7,} events/day, {pp['runs']} days: {pp['seconds'][1]:.1f}s in {pp['runs']} runs vs "
            f"{r['ranged']['seconds'][1]:.1f}s in 1 run = {speedup:.1f}x {verdict(speedup >= t['ranged_speedup'])}"
        )
    lines += [
        f"3. check cost, audit/transform per asset (target <= {t['check_cost']}):",
    ]
    def costs(assets: dict, ratios: dict) -> list[str]:
        out = []
        for asset, ratio in ratios.items():
            a = assets[asset]
            out.append(
                f"     {asset:<20} {a['audit_s']:>7.2f}s / {a['transform_s']:>7.2f}s = {ratio:.2f} "
                f"{verdict(ratio <= t['check_cost'])}"
            )
            if ratio > t["check_cost"]:  # where the audit's time went
                parts = {"profile scan": a["profile_s"], **a["checks_s"]}
                out.append("         " + ", ".join(f"{n} {s:.2f}s" for n, s in parts.items()))
        return out

    lines += costs(scaling[longest]["ours"]["assets"], summary["check_cost"])
    one_day = results["one_day"]
    lines.append(f"   one day ({one_day['day']}) into the {longest}-day tables (unique_grain reads every key):")
    lines += costs(one_day["assets"], summary["check_cost_one_day"])
    grain = {a: v["checks_s"].get("unique_grain", 0.0) for a, v in one_day["assets"].items()}
    lines.append("     unique_grain alone: " + ", ".join(f"{a} {s:.2f}s" for a, s in grain.items()))
    lines.append(f"4. read overhead, published relation / plain table (target <= {t['read_overhead']}):")
    for q, ratio in summary["read_overhead"].items():
        times = results["read"]["queries"][q]
        lines.append(
            f"     {q:<22} {times['ours'] * 1000:>8.1f}ms / {times['bare'] * 1000:>8.1f}ms = {ratio:.2f} "
            f"{verdict(ratio <= t['read_overhead'])}"
        )
    lines += [
        f"   same rows in both warehouses: {'yes' if summary['same_rows'] else 'NO'}",
        f"5. peak RSS of the {longest}-day run: {summary['rss_gib']:.2f} GiB (target <= {t['rss_gib']}) "
        f"{verdict(summary['rss_gib'] <= t['rss_gib'])}",
        "6. scaling, backfill seconds per day: "
        + ", ".join(f"{d} days {v['ours']:.3f}s (bare {v['bare']:.3f}s)" for d, v in per_day),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 1,000 events/day, 3 and 7 days")
    parser.add_argument("--events-per-day", type=int, default=100_000)
    parser.add_argument("--days", default="31,90,365", help="run lengths for overhead and scaling")
    parser.add_argument("--ranged-days", type=int, default=31, help="days of the ranged vs per-partition run")
    parser.add_argument("--ranged-events", type=int, default=2000, help="the other scale of that comparison")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of each read query")
    parser.add_argument("--memory-limit", default="1500MB", help="DuckDB memory_limit of every run (ours and bare)")
    parser.add_argument(
        "--only", choices=ONLY, help="run only these measurements: branch (7 and 8, the longest --days for 8) or "
        "branch-publish (7); the results go to benchmarks/results/latest-<only>.json unless --out says otherwise",
    )  # fmt: skip
    parser.add_argument("--branch-assets", type=int, default=8, help="tables of the branch publish (7)")
    parser.add_argument("--branch-days", type=int, default=365, help="partitions of each table of the branch publish")
    parser.add_argument("--publish-repeat", type=int, default=5, help="timed branch publishes, each a fresh branch")
    parser.add_argument(
        "--branch-pairs", type=int, default=2,
        help="plain and branch backfills of the comparison (8), alternating: plain, branch, branch, plain, ...",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="the JSON results (default benchmarks/results/latest.json)")
    parser.add_argument(
        "--workdir", type=Path, help="build the warehouses here and keep them (default: a temporary directory)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--bare-db", help=argparse.SUPPRESS)
    parser.add_argument("--assets", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--branch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.days = int(args.days)
        return _worker_main(args)
    if args.smoke:
        args.events_per_day, args.days, args.ranged_days, args.ranged_events, args.repeat = 1000, "3,7", 3, 500, 1
        args.branch_days, args.publish_repeat, args.branch_pairs = 7, 2, 1
    lengths = sorted({int(d) for d in args.days.split(",")})
    out = args.out or ROOT / "benchmarks" / "results" / (f"latest-{args.only}.json" if args.only else "latest.json")
    os.environ["BACKFILL_ASSETS_MEMORY_LIMIT"] = args.memory_limit  # the workers inherit it
    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = args.workdir
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bfa-bench-")))
        results = {}
        if not args.only:
            results = measure(args.events_per_day, lengths, args.ranged_days, args.ranged_events, args.repeat, tmp)
        results["branch_publish"] = measure_publish(args.branch_assets, args.branch_days, args.publish_repeat, tmp)
        if args.only != "branch-publish":  # over the longest run's warehouse, when the run above built it
            longest = max(lengths)
            base = None if args.only else tmp / f"ours-{longest}.duckdb"
            results["branch_run"] = measure_branch_run(args.events_per_day, longest, args.branch_pairs, tmp, base)
    results["machine"] = machine()
    results["memory_limit"] = args.memory_limit
    results["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["summary"] = summarise(results)
    print(report(results, results["summary"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
