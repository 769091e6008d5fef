"""What a table's partition count costs: publish time and read speed at 1,000, 20,000 and 100,000 published
partitions (three years of hourly data is 26,000). Prints a table and writes benchmarks/results/partitions.json.

    python benchmarks/partition_bench.py [--sizes 1000,20000,100000] [--smoke]

Each size gets its own warehouse under a temporary directory: an hourly table of 50 rows per partition
loaded in one run, then a history like a real table's: a backfill of a tenth of it (the versions it replaces
are kept for rollback), a run that fails a check and is held, and a run that publishes one hour. Measured:
- publish: the transaction that records a one-hour run's outcome, moves its pointer and rewrites the
  consumers' view, and the checkpoint after it (warehouse.decide), median of --repeat runs. Target <= 0.1 s at
  100k. The checkpoint's own share is printed beside it.
- reads: typical queries on the consumers' view against a plain table of the same rows in the same order,
  each the fastest of 15, alternating. Target <= 1.3x at every size.
"""

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backfill_assets import Invariant, TableSpec, catalog, warehouse, write_audit_publish  # noqa: E402

TARGETS = {"publish_s": 0.1, "read_ratio": 1.3}
ROWS = 50
START = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
HELD_GEN = 99  # a generation whose rows break the table's invariant
SQL = f"""
SELECT h AS hour, strftime(h, '%Y%m%d%H') || '-' || i AS id, 'c' || (i % 7) AS category,
       ((hash(h, i, $gen) % 10000) / 100)::DECIMAL(18, 2) AS amount, (i % 5)::INTEGER AS qty
FROM range($start::TIMESTAMPTZ, $end::TIMESTAMPTZ, INTERVAL 1 HOUR) r(h), range({ROWS}) t(i)
"""
QUERIES = {
    "full aggregation": "SELECT category, count(*), sum(amount), sum(qty) FROM {t} GROUP BY 1",
    "one day filtered": "SELECT category, sum(amount) FROM {t} WHERE hour >= $day AND hour < $day + INTERVAL 1 DAY "
    "GROUP BY 1",
    "by hour": "SELECT hour, sum(amount) FROM {t} GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
}


def spec(n: int) -> TableSpec:
    hourly = dg.HourlyPartitionsDefinition(start_date=START.strftime("%Y-%m-%d-%H:%M"))
    return TableSpec(
        name="events_hourly",
        partitions=hourly,
        partition_column="hour",
        grain=["id"],
        columns={},
        code_version="1",
        metrics={"amount": "sum(amount)"},
        rules=[Invariant("no_held_generation", f"SELECT * FROM candidate WHERE $gen = {HELD_GEN}")],
        partitions_per_write=max(31, n // 4),  # the load in four slices
        max_row_change=10.0,
    )


def keys(first: int, n: int) -> list[str]:
    return [(START + dt.timedelta(hours=h)).strftime("%Y-%m-%d-%H:%M") for h in range(first, first + n)]


def build(con: duckdb.DuckDBPyConnection, n: int) -> dict:
    """The table and its history; returns seconds per step."""
    s, seconds = spec(n), {}

    def run(name: str, first: int, count: int, gen: int, outcome: str) -> None:
        started = time.perf_counter()
        report = write_audit_publish(con, s, SQL, keys(first, count), run_id=f"{name}-{gen}", params={"gen": gen})
        if report.outcome != outcome:
            raise RuntimeError(f"{name}: {report.outcome}, expected {outcome}: {report.failure_message()}")
        seconds[name] = round(time.perf_counter() - started, 3)

    run("load", 0, n, 1, "publish")
    run("backfill a tenth", n // 2, max(1, n // 10), 2, "publish")
    run("held hour", n // 3, 1, HELD_GEN, "hold")
    run("one hour", n // 4, 1, 3, "publish")
    return seconds


def time_publishes(con: duckdb.DuckDBPyConnection, n: int, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of warehouse.decide in `repeat` one-hour runs that publish, and of the checkpoint that ends each
    (catalog.settle, part of decide)."""
    s, timed, settled = spec(n), [], []
    decide, settle = warehouse.decide, catalog.settle

    def timer(fn, into):
        def timed_fn(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - started)

        return timed_fn

    warehouse.decide, catalog.settle = timer(decide, timed), timer(settle, settled)
    try:
        for i in range(repeat):
            report = write_audit_publish(con, s, SQL, keys(n // 5 + i, 1), run_id=f"timed-{i}", params={"gen": 4})
            if report.outcome != "publish":
                raise RuntimeError(report.failure_message())
    finally:
        warehouse.decide, catalog.settle = decide, settle
    return timed, settled


def time_reads(con: duckdb.DuckDBPyConnection, n: int) -> dict:
    con.execute("CREATE OR REPLACE TABLE plain AS SELECT * FROM main.events_hourly ORDER BY hour")
    con.execute("CHECKPOINT")  # both sides in the file's storage, as the last publish left the view's rows
    day = START + dt.timedelta(hours=n // 2)
    out = {}
    for name, q in QUERIES.items():
        sql = {t: q.format(t=t) for t in ("events_hourly", "plain")}
        params = {"day": day} if "$day" in q else {}
        same = sorted(map(repr, con.execute(sql["plain"], params).fetchall()))
        if same != sorted(map(repr, con.execute(sql["events_hourly"], params).fetchall())):
            raise RuntimeError(f"{name}: the view and the plain table disagree")
        best = {t: float("inf") for t in sql}
        for _ in range(15):
            for t in sql:
                started = time.perf_counter()
                con.execute(sql[t], params).fetchall()
                best[t] = min(best[t], time.perf_counter() - started)
        view, plain = best["events_hourly"], best["plain"]
        out[name] = {"view_s": view, "plain_s": plain, "ratio": view / plain}
    return out


def view_filter(con: duckdb.DuckDBPyConnection) -> str:
    sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'events_hourly'").fetchall()[0][0]
    return sql.split(" WHERE ", 1)[1].rstrip(";")


def measure(n: int, repeat: int, tmp: Path) -> dict:
    with warehouse.connect(str(tmp / f"partitions-{n}.duckdb")) as con:
        steps = build(con, n)
        publishes, checkpoints = time_publishes(con, n, repeat)
        rows, published = con.execute(
            "SELECT (SELECT count(*) FROM main.events_hourly), (SELECT count(*) FROM bfa.published)"
        ).fetchall()[0]
        if (rows, published) != (n * ROWS, n):
            raise RuntimeError(f"expected {n * ROWS} rows in {n} partitions, read {rows} in {published}")
        return {
            "partitions": n, "rows": rows, "build_s": steps, "publish_s": statistics.median(publishes),
            "publish_runs_s": publishes, "checkpoint_s": statistics.median(checkpoints),
            "reads": time_reads(con, n), "view_filter": view_filter(con),
        }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,20000,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the measurement runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "partitions.json")
    args = ap.parse_args()
    sizes = [50, 200] if args.smoke else [int(x) for x in args.sizes.split(",")]
    results = {"machine": {"duckdb": duckdb.__version__, "python": platform.python_version()}, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bfa-partitions-") as tmp:
        for n in sizes:
            print(f"{n:,} partitions ...", file=sys.stderr, flush=True)
            results["sizes"][n] = measure(n, 2 if args.smoke else args.repeat, Path(tmp))
    worst = max(r["ratio"] for m in results["sizes"].values() for r in m["reads"].values())
    largest = results["sizes"][max(sizes)]
    results["summary"] = {"publish_s_at_largest": largest["publish_s"], "worst_read_ratio": worst}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"{'partitions':>10}  {'publish':>9}  {'checkpoint':>10}  " + "  ".join(f"{q:>18}" for q in QUERIES)
          + "  view filter")  # fmt: skip
    for n, m in results["sizes"].items():
        reads = "  ".join(f"{m['reads'][q]['ratio']:>17.2f}x" for q in QUERIES)
        print(f"{n:>10,}  {m['publish_s']:>8.3f}s  {m['checkpoint_s']:>9.3f}s  {reads}  {m['view_filter'][:60]}")
    ok = largest["publish_s"] <= TARGETS["publish_s"], worst <= TARGETS["read_ratio"]
    print(f"publish at {max(sizes):,}: {largest['publish_s']:.3f} s (target <= {TARGETS['publish_s']} s) "
          f"{'met' if ok[0] else 'MISSED'}; worst read ratio {worst:.2f}x (target <= {TARGETS['read_ratio']}x) "
          f"{'met' if ok[1] else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
