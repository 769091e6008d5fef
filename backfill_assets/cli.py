"""``backfill-assets``: the command line for scripts, CI and people.

Exit codes: 0 success; 1 a check held a partition range (nothing published for it), a brief failed
preflight (nothing launched) or a launched backfill did not publish everything; 2 a usage error (bad
date, unknown asset, out-of-range, unreadable brief, no definitions found); 3 Dagster could not be
reached or refused the request.
"""

import argparse
import datetime as dt
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from . import briefs, launch, planning, warehouse
from .factory import WAREHOUSE_KEY

EXIT_OK, EXIT_HELD, EXIT_USAGE, EXIT_DAGSTER = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:3000"


class UsageError(Exception):
    """A mistake in how the command was called; the message says what to change."""


def load_definitions(path: str) -> dg.Definitions:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no definitions file at {path}; pass -f path/to/definitions.py")
    sys.path.insert(0, str(file.resolve().parent))
    spec = importlib.util.spec_from_file_location("_bfa_user_definitions", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [v for v in vars(module).values() if isinstance(v, dg.Definitions)]
    if len(found) != 1:
        raise UsageError(f"{path} must define exactly one dagster Definitions object, found {len(found)}")
    return found[0]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def plan_groups(
    defs: dg.Definitions, select: str | None, start: dt.date, end: dt.date
) -> list[tuple[list[dg.AssetKey], list[str]]]:
    """Selected materializable assets in ranged runs: one per partitions definition, upstream
    groups first, each with the partitions whose whole time window lies in [start, end]."""
    graph = defs.resolve_asset_graph()
    keys = planning.resolve_selection(graph, select)
    planning.check_range(graph, keys, start, end)
    groups: dict[Any, list[dg.AssetKey]] = {}
    for key in sorted(keys):
        groups.setdefault(graph.get(key).partitions_def, []).append(key)
    planned = []
    for pdef in _upstream_first(graph, groups):
        index = planning.partition_index(pdef)
        lo, hi = index.within(start, end)
        planned.append((groups[pdef], list(index.keys[lo:hi])))
    return planned


def _upstream_first(graph, groups: dict[Any, list[dg.AssetKey]]) -> list[Any]:
    group_of = {k: pdef for pdef, ks in groups.items() for k in ks}
    needs = {pdef: set() for pdef in groups}
    for key, pdef in group_of.items():
        for ancestor in graph.upstream_key_iterator(key):
            if ancestor in group_of and group_of[ancestor] != pdef:
                needs[pdef].add(group_of[ancestor])
    order: list[Any] = []
    while needs:
        ready = [p for p, deps in needs.items() if deps <= set(order)]
        if not ready:
            raise UsageError("the selected assets' partition groups depend on each other in a cycle")
        order += ready
        for p in ready:
            del needs[p]
    return order


def _read_warehouse(defs: dg.Definitions):
    """A read-only connection to the definitions' warehouse, or None when it does not exist yet."""
    resource = defs.resources.get(WAREHOUSE_KEY)
    if resource is None or not os.path.exists(resource.database):
        return None
    con = warehouse.connect(resource.database, lock_timeout_s=resource.lock_timeout_s, read_only=True)
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'bfa'").fetchall()[0][0]:
        con.close()
        return None
    return con


def _published_everywhere(defs: dg.Definitions, keys: list[dg.AssetKey], partitions: list[str]) -> bool:
    con = _read_warehouse(defs)
    if con is None:
        return False
    try:
        return all(set(partitions) <= warehouse.published_partitions(con, k.to_user_string()).keys() for k in keys)
    finally:
        con.close()


def _failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    out = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            out.append(user.description if user and user.description else data.error.message.strip())
    return out


def cmd_materialize(args: argparse.Namespace) -> int:
    defs = load_definitions(args.file)
    groups = plan_groups(defs, args.select, args.start, args.end)
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    report, code = [], EXIT_OK
    for i, (keys, partitions) in enumerate(groups, 1):
        names = [k.to_user_string() for k in keys]
        entry: dict[str, Any] = {"assets": names, "partitions": len(partitions)}
        label = f"[{i}/{len(groups)}] {', '.join(names)}"
        if not partitions:
            entry["status"] = "skipped: no whole partition in the range"
        elif args.only_missing and _published_everywhere(defs, keys, partitions):
            entry["status"] = "skipped: already published"
        else:
            entry["range"] = f"{partitions[0]}..{partitions[-1]}"
            _say(args, f"{label}: {len(partitions)} partitions {entry['range']} ...")
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                asset_selection=keys,
                raise_on_error=False,
                tags={
                    "dagster/asset_partition_range_start": partitions[0],
                    "dagster/asset_partition_range_end": partitions[-1],
                    "backfill_assets/cli": "materialize",
                },
                run_config={"loggers": {"console": {"config": {"log_level": "INFO" if args.verbose else "CRITICAL"}}}},
            )
            entry.update(run_id=result.run_id, seconds=round(time.perf_counter() - started, 2))
            if result.success:
                entry["status"] = "published"
            else:
                entry["status"] = "held"
                entry["errors"] = _failure_messages(result)
                code = EXIT_HELD
        _say(args, f"{label}: {entry['status']}" + (f" in {entry['seconds']}s" if "seconds" in entry else ""))
        for err in entry.get("errors", []):
            _say(args, f"    {err}")
        report.append(entry)
        if code != EXIT_OK:
            break  # later groups read what this one failed to publish
    if args.json:
        print(json.dumps({"runs": report, "ok": code == EXIT_OK}, indent=2))
    return code


def cmd_plan(args: argparse.Namespace) -> int:
    defs = load_definitions(args.file)
    graph = defs.resolve_asset_graph()
    con = _read_warehouse(defs)
    try:
        if args.stale:
            if con is None:
                raise UsageError("--stale needs a warehouse with published data; none exists yet")
            seeds, reasons = planning.stale_seeds(graph, con)
            description = "partitions published under an older code version"
        else:
            if not (args.start and args.end):
                raise UsageError("give --from and --to (or --stale)")
            keys = planning.resolve_selection(graph, args.select)
            planning.check_range(graph, keys, args.start, args.end)
            seeds, reasons = planning.selection_seeds(graph, keys, args.start, args.end), {}
            description = f"{args.select or 'all assets'} over {args.start}..{args.end}"
        plan = planning.add_warehouse_facts(planning.blast_radius(graph, seeds, reasons), con)
    finally:
        if con is not None:
            con.close()
    plan.scope = {
        "description": description,
        "select": args.select,
        "stale": args.stale,
        "from": args.start,
        "to": args.end,
    }
    print(plan.to_json() if args.json else planning.render(plan))
    return EXIT_OK


def _preflight(args: argparse.Namespace) -> tuple[dg.Definitions, briefs.Preflight]:
    brief = briefs.load(args.brief)
    defs = load_definitions(args.file)
    con = _read_warehouse(defs)
    try:
        return defs, briefs.preflight(brief, defs, con)
    finally:
        if con is not None:
            con.close()


def cmd_preflight(args: argparse.Namespace) -> int:
    _, result = _preflight(args)
    print(result.render())
    return EXIT_OK if result.passed else EXIT_HELD


def cmd_launch(args: argparse.Namespace) -> int:
    defs, result = _preflight(args)
    if not result.passed:
        print(result.render())
        print("\nNothing launched: fix the brief and run preflight again.")
        return EXIT_HELD
    backfill_id = launch.launch(args.url, result.brief, result.plan)
    print(
        f"Launched backfill {backfill_id} for brief {result.brief['id']}: "
        f"{result.plan.totals()['partitions']} partitions of {len(result.plan.tables)} assets"
    )
    print(f"Follow it in the UI: {args.url.rstrip('/')}/runs/b/{backfill_id}")
    if not args.wait:
        return EXIT_OK
    state = _wait(args.url, backfill_id, args.poll_seconds)
    return _print_status(defs, state, args.url)


def _wait(url: str, backfill_id: str, poll_seconds: float) -> dict[str, Any]:
    last = None
    while True:
        state = launch.status(url, backfill_id)
        done, failed, total = launch.progress(state)
        line = f"{_bar(done + failed, total)} {done}/{total} partitions published, {failed} failed, {state['status']}"
        if line != last:
            print(line, flush=True)
            last = line
        if state["status"] in launch.DONE:
            return state
        time.sleep(poll_seconds)


def _bar(n: int, total: int, width: int = 30) -> str:
    filled = width if not total else round(width * n / total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _print_status(defs: dg.Definitions, state: dict[str, Any], url: str) -> int:
    con = _read_warehouse(defs)
    try:
        ledger = launch.ledger_summary(con, [r["runId"] for r in state["runs"]])
    finally:
        if con is not None:
            con.close()
    print(f"\nBackfill {state['id']}: {state['status']} ({state.get('title') or 'untitled'})")
    print(f"{'asset':<22} {'targeted':>8} {'published':>9} {'held':>5} {'failed':>6}")
    counts = (state.get("assetBackfillData") or {}).get("assetBackfillStatuses") or []
    problems = 0
    for c in counts:
        asset = "/".join(c["assetKey"]["path"])
        mine = ledger.get(asset, {"published": 0, "held": 0})
        problems += mine["held"] + c["numPartitionsFailed"]
        print(
            f"{asset:<22} {c['numPartitionsTargeted']:>8} {mine['published']:>9} {mine['held']:>5} "
            f"{c['numPartitionsFailed']:>6}"
        )
    print(
        f"Runs: {len(state['runs'])} ({', '.join(sorted({r['status'] for r in state['runs']})) or 'none yet'}). "
        f"UI: {url.rstrip('/')}/runs/b/{state['id']}"
    )
    ok = state["status"] in ("COMPLETED", "COMPLETED_SUCCESS") and problems == 0
    return EXIT_OK if ok or state["status"] not in launch.DONE else EXIT_HELD


def cmd_status(args: argparse.Namespace) -> int:
    state = launch.status(args.url, args.backfill_id)
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
        return EXIT_OK
    return _print_status(load_definitions(args.file), state, args.url)


def _say(args: argparse.Namespace, line: str) -> None:
    if not args.json:
        print(line, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backfill-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    mat = sub.add_parser(
        "materialize",
        help="write-audit-publish a date range, one ranged run per partitions definition",
        description="Materialize the selected assets over [--from, --to] in one ranged run per partitions "
        "definition (daily, then weekly, then monthly), recorded in $DAGSTER_HOME's instance when set. Weekly and "
        "monthly partitions are included only when their whole window lies in the range.",
    )
    mat.add_argument("-f", "--file", default="definitions.py", help="Python file defining the Definitions")
    mat.add_argument("--select", help="Dagster asset selection, e.g. 'key:events_clean+' (default: all)")
    mat.add_argument("--from", dest="start", type=_date, required=True, help="first date, YYYY-MM-DD")
    mat.add_argument("--to", dest="end", type=_date, required=True, help="last date, YYYY-MM-DD (inclusive)")
    mat.add_argument("--only-missing", action="store_true", help="skip groups whose partitions are all published")
    mat.add_argument("--json", action="store_true", help="print a JSON report instead of progress lines")
    mat.add_argument("-v", "--verbose", action="store_true", help="show Dagster's run log")
    mat.set_defaults(func=cmd_materialize)

    plan = sub.add_parser(
        "plan",
        help="show the blast radius of a backfill: assets, partitions, rows, code versions, consumers",
        description="Every asset and partition a backfill of the selection over [--from, --to] changes, through "
        "the lineage graph and its partition mappings, with rows published now, code versions, owners, the "
        "consumers to notify and an estimate from past runs. --stale plans every partition published under "
        "an older code version than the current definition.",
    )
    plan.add_argument("-f", "--file", default="definitions.py", help="Python file defining the Definitions")
    plan.add_argument("--select", help="Dagster asset selection (default: all)")
    plan.add_argument("--from", dest="start", type=_date, help="first date, YYYY-MM-DD")
    plan.add_argument("--to", dest="end", type=_date, help="last date, YYYY-MM-DD (inclusive)")
    plan.add_argument("--stale", action="store_true", help="plan the partitions published under older code")
    plan.add_argument("--json", action="store_true", help="print stable JSON")
    plan.set_defaults(func=cmd_plan)

    pre = sub.add_parser("preflight", help="check a backfill brief and print its blast radius (exit 1 if it fails)")
    pre.add_argument("brief", help="path of the brief, e.g. backfills/refunds-fix-2025q1.yaml")
    pre.add_argument("-f", "--file", default="definitions.py", help="Python file defining the Definitions")
    pre.set_defaults(func=cmd_preflight)

    lau = sub.add_parser("launch", help="preflight a brief, then launch its backfill on a running Dagster")
    lau.add_argument("brief", help="path of the brief")
    lau.add_argument("-f", "--file", default="definitions.py", help="Python file defining the Definitions")
    lau.add_argument("--url", default=DEFAULT_URL, help=f"Dagster webserver (default {DEFAULT_URL})")
    lau.add_argument("--wait", action="store_true", help="show progress until the backfill ends, then a summary")
    lau.add_argument("--poll-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    lau.set_defaults(func=cmd_launch)

    sta = sub.add_parser("status", help="a launched backfill's state and per-asset summary")
    sta.add_argument("backfill_id")
    sta.add_argument("-f", "--file", default="definitions.py", help="Python file defining the Definitions")
    sta.add_argument("--url", default=DEFAULT_URL, help=f"Dagster webserver (default {DEFAULT_URL})")
    sta.add_argument("--json", action="store_true", help="print Dagster's answer as JSON")
    sta.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, planning.PlanError, briefs.BriefError, warehouse.WarehouseLockTimeout) as e:
        print(f"backfill-assets: {e}", file=sys.stderr)
        return EXIT_USAGE
    except launch.DagsterError as e:
        print(f"backfill-assets: {e}", file=sys.stderr)
        return EXIT_DAGSTER


if __name__ == "__main__":
    sys.exit(main())
