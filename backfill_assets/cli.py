"""``backfill-assets``: the command line for scripts, CI and people.

Exit codes: 0 success; 1 a check held a partition range (nothing published for it), a partition the range
names waits for unpublished inputs, the warehouse stayed locked by another process past the timeout, a brief
failed preflight (nothing launched) or a launched backfill did not publish everything; 2 a usage error (bad
date, unknown asset, out-of-range, unreadable brief, no definitions found); 3 Dagster could not be
reached or refused the request.
"""

import argparse
import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import os
import sys
import time
import tomllib
import traceback
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.code_pointer import load_python_file, load_python_module  # Dagster's own -f and -m import
from dagster.components.definitions import LazyDefinitions

from . import briefs, catalog, changes, diff, history, launch, planning, trial, warehouse
from .audit import plural
from .factory import (
    BRANCH_TAG,
    BRIEF_TAG,
    OWNER_TAG,
    PROVISIONAL_METADATA,
    WAREHOUSE_KEY,
    announce,
    report_pointer_changes,
)
from .instance import init as init_instance

EXIT_OK, EXIT_HELD, EXIT_USAGE, EXIT_DAGSTER = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:3000"


class UsageError(Exception):
    """A mistake in how the command was called; the message says what to change."""


def load_definitions(args: argparse.Namespace | str) -> dg.Definitions:
    """The Definitions of ``-f FILE`` (or a path) or ``-m MODULE``, imported as ``dagster dev`` does (the working
    directory on the import path, and the file's own directory); with neither, ``definitions.py`` here, else the
    project of ``pyproject.toml`` here (``[tool.dg.project]`` or ``[tool.dagster] module_name``). A failing
    import is a one-line UsageError."""
    if isinstance(args, str):
        file, module = args, None
    else:
        file, module = getattr(args, "file", None), getattr(args, "module", None)
    if not file and not module:
        file, module = ("definitions.py", None) if Path("definitions.py").is_file() else (None, _project_module())
    where = file or module
    if file and not Path(file).is_file():
        raise UsageError(f"no definitions file at {file}; pass -f path/to/definitions.py or -m package.module")
    if file and str(Path(file).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(file).resolve().parent))
    try:
        here = os.getcwd()
        loaded = load_python_file(file, here, add_uuid_suffix=True) if file else load_python_module(module, here)
        found = [v for v in vars(loaded).values() if isinstance(v, dg.Definitions | LazyDefinitions)]
        if len(found) != 1:
            raise UsageError(f"{where} must define exactly one dagster Definitions object, found {len(found)}")
        defs = found[0]() if isinstance(found[0], LazyDefinitions) else found[0]
    except UsageError:
        raise
    except Exception as e:  # the user's code: say what failed and where, in one line
        raise UsageError(f"could not load {where}: {_error_line(e)}") from None
    return defs


def _project_module() -> str:
    """The definitions module of the Dagster project in the working directory."""
    try:
        config = tomllib.loads(Path("pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        config = {}
    tool = config.get("tool", {})
    project = tool.get("dg", {}).get("project", {})
    default = f"{project['root_module']}.definitions" if "root_module" in project else None
    module = project.get("code_location_target_module") or default or tool.get("dagster", {}).get("module_name")
    if not module:
        raise UsageError(
            "no definitions.py here and no Dagster project in ./pyproject.toml; pass -f path/to/definitions.py "
            "or -m package.module"
        )
    return module


def _error_line(error: BaseException) -> str:
    """``ModuleNotFoundError: No module named 'x' (experiments/x.py, line 3)``: the root cause and the deepest
    frame of it outside Python's and Dagster's own code."""
    while error.__cause__ is not None:
        error = error.__cause__
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if "site-packages" not in f.filename and not f.filename.startswith("<frozen")
    ]
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    at = f" ({os.path.relpath(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {message}{at}"


def project_dir(args: argparse.Namespace) -> Path:
    """Where the project's backfills/ folder is: next to the -f file, else the working directory."""
    return Path(args.file).resolve().parent if getattr(args, "file", None) else Path.cwd()


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value


def _read_warehouse(defs: dg.Definitions, required: bool = False):
    """A read-only connection to the definitions' warehouse; None (or, if `required`, a usage error) when it
    holds no catalog yet. Never creates the file."""
    resource = _warehouse_resource(defs)
    con = None
    if os.path.exists(resource.database):
        con = warehouse.connect(resource.database, lock_timeout_s=resource.lock_timeout_s, read_only=True)
        if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'bfa'").fetchall()[0][0]:
            con.close()
            con = None
    if con is None and required:
        raise UsageError(
            f"no warehouse with published data at {resource.database}: materialize first, or point "
            "BACKFILL_ASSETS_DB at the warehouse"
        )
    return con


def _warehouse_resource(defs: dg.Definitions) -> warehouse.Warehouse:
    resource = (defs.resources or {}).get(WAREHOUSE_KEY)
    if resource is None:
        raise UsageError(f"the definitions have no {WAREHOUSE_KEY!r} resource (a backfill_assets.Warehouse)")
    return resource


def _success_status(result: dg.ExecuteInProcessResult) -> str:
    """ "published", what a parallel_version table did instead, and which partitions published provisionally
    (see each materialization's metadata)."""
    candidates: set[str] = set()
    provisional: dict[str, list[str]] = {}
    branch = result.dagster_run.tags.get(BRANCH_TAG)
    for e in result.all_events:
        if e.event_type_value != "ASSET_MATERIALIZATION":
            continue
        materialization = e.event_specific_data.materialization
        asset = materialization.asset_key.to_user_string()
        if "candidate" in str(getattr(materialization.metadata.get("outcome"), "value", "")):
            candidates.add(asset)
        if PROVISIONAL_METADATA in materialization.metadata:
            provisional.setdefault(asset, []).append(materialization.partition)
    status = "published" if not candidates else f"kept as parallel candidates of {', '.join(sorted(candidates))}"
    if branch:
        status = f"staged in branch {branch} (consumers read the published versions until it publishes)"
    if provisional:
        spans = "; ".join(f"{a} {_span_of(sorted(keys))}" for a, keys in sorted(provisional.items()))
        status += f" (provisional, before late inputs: {spans})"
    return status


def _failure_messages(result: dg.ExecuteInProcessResult) -> tuple[list[str], bool]:
    """The failed steps' messages, and whether any was a check holding a candidate (not an error)."""
    out, held = [], False
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            if user and user.description:
                out.append(user.description)
                held = True
            else:  # an exception in the step: its own message, not Dagster's wrapper or a traceback
                error = data.error.cause or data.error
                line = error.message.strip().splitlines()[0]
                # our own errors say what to change; their class name is noise
                out.append(line.split(": ", 1)[1] if line.startswith("backfill_assets.") else line)
    return out, held


def materialize_runs(
    defs: dg.Definitions,
    select: str | None,
    start: dt.date | None,
    end: dt.date | None,
    where: planning.Where | None = None,
) -> tuple[list[planning.Run], dict[str, dict[str, list[str]]], dict[str, list[str]]]:
    """What ``materialize`` runs: the selected assets' share of ``plan``'s blast radius (one function,
    planning.plan_range); the partitions left waiting for inputs; and of those, the ones the range itself
    names (a selected asset's partition whose whole window lies in it), which fail the command."""
    graph = defs.resolve_asset_graph()
    plan = planning.plan_range(graph, select, start, end, where)
    selected = planning.resolve_selection(graph, select)
    con = _read_warehouse(defs)
    try:
        runs, waiting = planning.materialize_runs(graph, plan, selected, catalog.published_keys(con))
    finally:
        if con is not None:
            con.close()
    return runs, waiting, planning.named_by_range(graph, selected, start, end, waiting, where)


def _open_and_announce(defs: dg.Definitions, args: argparse.Namespace, instance: dg.DagsterInstance) -> None:
    """Open `--branch` before the runs; when this command opens it, the tables and consumers of the range's blast
    radius get the maintenance notice in Dagster (a branch opened earlier, by launch or try, has had its own)."""
    with _warehouse_resource(defs).get_connection() as con:
        if catalog.branch_info(con, args.branch) is not None:
            return
        warehouse.open_branch(con, args.branch)
    plan = planning.plan_range(defs.resolve_asset_graph(), args.select, args.start, args.end, _where(args))
    notice = changes.maintenance_notice(plan, args.branch, f"materialize by {getpass.getuser()}", reviewer=None)
    told = announce(instance, plan, notice)
    _say(args, f"Opened branch {args.branch}; maintenance notice on {plural(told, 'asset')} in Dagster")


def _where(args: argparse.Namespace) -> dict[str, list[str]]:
    return planning.parse_where(getattr(args, "where", None))


def cmd_materialize(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    if (args.start is None) != (args.end is None) or (args.start is None and not args.where):
        raise UsageError("give --from and --to, and/or --where NAME=KEY for static partitions")
    runs, waiting, blocked = materialize_runs(defs, args.select, args.start, args.end, _where(args))
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    if args.branch:
        _open_and_announce(defs, args, instance)
    report, code = [], EXIT_OK
    if not runs:
        _say(args, "Nothing to run: no whole partition of the selection lies in the range.")
    for i, run in enumerate(runs, 1):
        names = [k.to_user_string() for k in run.assets]
        entry: dict[str, Any] = {"assets": names, "partitions": len(run.keys)}
        entry["range"] = f"{run.keys[0]}..{run.keys[-1]}" if run.keys else planning.WHOLE
        label = f"[{i}/{len(runs)}] {', '.join(names)}"
        if args.only_missing and _already_there(defs, instance, run):
            entry["status"] = "skipped: already published" if run.keys else "skipped: already materialized"
        else:
            what = f"{plural(len(run.keys), 'partition')} {entry['range']}" if run.keys else "unpartitioned, whole"
            _say(args, f"{label}: {what} ...")
            started = time.perf_counter()
            ranged = (
                {"dagster/asset_partition_range_start": run.keys[0], "dagster/asset_partition_range_end": run.keys[-1]}
                if run.keys
                else {}
            )
            result = job.execute_in_process(
                instance=instance,
                asset_selection=list(run.assets),
                raise_on_error=False,
                tags={
                    **dict(args.tag or []),
                    **ranged,
                    **({BRANCH_TAG: args.branch} if args.branch else {}),
                    "backfill_assets/cli": "materialize",
                },
                run_config={"loggers": {"console": {"config": {"log_level": "INFO" if args.verbose else "CRITICAL"}}}},
            )
            entry.update(run_id=result.run_id, seconds=round(time.perf_counter() - started, 2))
            if result.success:
                entry["status"] = _success_status(result) if run.keys else "materialized"
            else:
                entry["errors"], held = _failure_messages(result)
                entry["status"] = "held" if held else "failed"
                code = EXIT_HELD
        _say(args, f"{label}: {entry['status']}" + (f" in {entry['seconds']}s" if "seconds" in entry else ""))
        for err in entry.get("errors", []):
            _say(args, f"    {err}")
        if entry["status"].startswith("kept as parallel candidates"):
            _say(args, "    consumers still read the previous versions: compare with diff, publish with cutover")
        report.append(entry)
        if code != EXIT_OK:
            break  # later runs read what this one failed to publish
    for asset, parts in sorted(waiting.items()):
        by_input: dict[str, set[str]] = {}
        for missing in parts.values():
            for need in missing:
                upstream, key = catalog.parse_input(need)
                by_input.setdefault(upstream, set()).add(key)
        inputs = "; ".join(f"{a} {_span_of(sorted(ks))}" for a, ks in sorted(by_input.items()))
        _say(
            args,
            f"not run: {asset} {_span_of(sorted(parts))} reads upstream partitions that are not published: {inputs} "
            "(materialize them, then run this again)",
        )
    if blocked and code == EXIT_OK:
        code = EXIT_HELD  # partitions the range names were not run; downstream ones reached from it may wait
    if args.json:
        print(json.dumps({"runs": report, "waiting": waiting, "ok": code == EXIT_OK}, indent=2))
    return code


def _span_of(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]} ({len(keys)} partitions)"


def _already_there(defs: dg.Definitions, instance: dg.DagsterInstance, run: planning.Run) -> bool:
    """--only-missing: every partition of the run's tables is published; for unpartitioned assets, Dagster's
    instance has a materialization of each."""
    if not run.keys:
        return all(instance.get_latest_materialization_event(key) is not None for key in run.assets)
    con = _read_warehouse(defs)
    try:
        published = catalog.published_keys(con)
        return all(set(run.keys) <= published(k.to_user_string()) for k in run.assets)
    finally:
        if con is not None:
            con.close()


def cmd_plan(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    graph = defs.resolve_asset_graph()
    con = _read_warehouse(defs, required=args.stale)  # --stale reads the published code versions
    try:
        if args.stale:
            seeds, reasons = planning.stale_seeds(graph, con)
            description = "partitions published under an older code version"
        else:
            where = _where(args)
            if not (args.start and args.end) and not where:
                raise UsageError("give --from and --to, --where NAME=KEY for static partitions, or --stale")
            plan = planning.plan_range(graph, args.select, args.start, args.end, where)
            scope = [f"{args.start}..{args.end}"] if args.start and args.end else []
            scope += [f"{n}={','.join(k)}" for n, k in where.items()]
            description = f"{args.select or 'all assets'} over {' '.join(scope)}"
        if args.stale:
            plan = planning.blast_radius(graph, seeds, reasons)
        plan = planning.add_warehouse_facts(plan, con)
    finally:
        if con is not None:
            con.close()
    plan.scope = {
        "description": description,
        "select": args.select,
        "stale": args.stale,
        "from": args.start,
        "to": args.end,
        "where": _where(args),
    }
    print(plan.to_json() if args.json else planning.render(plan))
    return EXIT_OK


def _preflight(args: argparse.Namespace) -> tuple[dg.Definitions, briefs.Preflight]:
    brief = briefs.load(args.brief)
    defs = load_definitions(args)
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
    brief = result.brief
    if args.branch:  # opened before the runs, with the brief's risk and reviewer, so its publish needs the review
        with _write_warehouse(defs) as con:
            warehouse.open_branch(
                con, args.branch, title=brief["title"], brief=str(brief["id"]), risk=brief["risk"],
                reviewer=str(brief["reviewer"]), actor=str(brief["owner"]),
            )  # fmt: skip
    backfill_id = launch.launch(args.url, brief, result.plan, args.branch)
    say = sys.stderr if args.json else sys.stdout  # --json: the JSON alone on stdout
    where = f" into branch {args.branch}" if args.branch else ""
    print(f"Launched backfill {backfill_id} for brief {brief['id']}{where}: {launch.scope(result.plan)}", file=say)
    told = 0
    if args.branch:
        who = f"backfill brief {brief['id']} ({brief['title']})"
        notice = changes.maintenance_notice(result.plan, args.branch, who, str(brief["reviewer"]))
        told = launch.announce(args.url, result.plan, notice)
        print(f"Maintenance notice on {plural(told, 'asset')} of the blast radius (tables and consumers)", file=say)
    note = Path(args.out) / str(brief["id"]) / "before.md"
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(launch.before_the_run(brief, result.plan, backfill_id, args.branch))
    ui = f"{args.url.rstrip('/')}/runs/b/{backfill_id}"
    print(f"Change note before the run: {note} (what will change, when, whom to tell)", file=say)
    print(f"Follow it in the UI: {ui}", file=say)
    state = _wait(args.url, backfill_id, args.poll_seconds, args.branch, say) if args.wait else None
    if args.json:
        launched = {"backfill_id": backfill_id, "brief": brief["id"], "branch": args.branch, "url": ui,
                    "scope": launch.scope(result.plan), "notified_assets": told, "before_the_run": str(note),
                    "status": state}  # fmt: skip
        print(json.dumps(launched, indent=2, sort_keys=True))
        return EXIT_OK if state is None or state["status"] == "COMPLETED_SUCCESS" else EXIT_HELD
    return EXIT_OK if state is None else _print_status(defs, state, args.url)


def cmd_try(args: argparse.Namespace) -> int:
    """Run a brief's backfill over a slice in a throwaway branch, report, extrapolate, discard (unless --keep)."""
    start, end = _slice(args.slice)
    defs, result = _preflight(args)
    if not result.passed:
        print(result.render())
        print("\nNothing tried: fix the brief and run preflight again.")
        return EXIT_HELD
    brief, scope = result.brief, result.brief["scope"]
    if scope.get("from") is None:
        raise UsageError(f"brief {brief['id']} has no dates: --slice tries some of its days")
    first, last = (briefs.day(scope[k], k) for k in ("from", "to"))
    if start < first or end > last:
        raise UsageError(f"--slice {args.slice} is outside the brief's scope {first}..{last}")
    branch = f"try-{brief['id']}-{uuid.uuid4().hex[:6]}"
    owner = str(brief["owner"])
    with _write_warehouse(defs) as con:
        catalog.open_branch(
            con, branch, title=f"try: {brief['title']}", brief=str(brief["id"]), risk=brief["risk"],
            reviewer=str(brief["reviewer"]), actor=owner,
        )  # fmt: skip
    say = sys.stderr if args.json else sys.stdout  # --json: the JSON alone on stdout
    print(f"Trying brief {brief['id']} over {start}..{end} in branch {branch} (consumers' data does not change)",
          file=say)  # fmt: skip
    select = f"({scope['select']})+"  # the whole blast radius, as launch targets it
    run = argparse.Namespace(
        file=args.file, module=args.module, select=select, start=start, end=end, only_missing=False,
        where=[f"{n}={','.join(k)}" for n, k in briefs.scope_where(scope).items()],
        json=False, verbose=False, tag=[(BRIEF_TAG, str(brief["id"])), (OWNER_TAG, owner)], branch=branch,
    )  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(say):
        code = cmd_materialize(run)
    wall = time.perf_counter() - started
    slice_runs = materialize_runs(defs, select, start, end)[0]
    full_runs = materialize_runs(defs, select, first, last)[0]
    graph = defs.resolve_asset_graph()
    grains = {
        k.to_user_string(): [c.strip() for c in str(_metadata(graph.get(k), "grain")).split(",")]
        for k in graph.get_all_asset_keys()
        if _is_table(graph.get(k))
    }
    con = _read_warehouse(defs, required=True)
    try:
        lineage = [k.to_user_string() for r in full_runs for k in r.assets]
        tried = trial.collect(con, branch, result.plan, grains, wall, len(slice_runs), len(full_runs), lineage)
    finally:
        con.close()
    if not args.keep:
        with _write_warehouse(defs) as con:
            warehouse.discard_branch(con, branch, owner, "slice try")
    print(json.dumps(trial.as_json(tried), indent=2) if args.json else f"\n{tried.render()}")
    print(
        f"\nBranch {branch} kept: compare with diff, then branch publish or branch discard"
        if args.keep
        else f"\nBranch {branch} discarded: no pointer moved, consumers read what they read before",
        file=say,
    )
    return EXIT_OK if tried.passed and code == EXIT_OK else EXIT_HELD


def _slice(text: str) -> tuple[dt.date, dt.date]:
    first, sep, last = text.partition("..")
    if not sep:
        raise UsageError(f"--slice {text!r}: give FROM..TO, e.g. 2025-01-01..2025-01-07")
    try:
        start, end = _date(first), _date(last)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--slice: {e}") from None
    if end < start:
        raise UsageError(f"--slice {text}: {start} is after {end}")
    return start, end


def _wait(url: str, backfill_id: str, poll_seconds: float, branch: str | None = None, out=None) -> dict[str, Any]:
    last, verb = None, "staged" if branch else "published"
    while True:
        state = launch.status(url, backfill_id)
        done, failed, total = launch.progress(state)
        line = f"{_bar(done + failed, total)} {done}/{total} partitions {verb}, {failed} failed, {state['status']}"
        if line != last:
            print(line, flush=True, file=out or sys.stdout)
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
    branch = next((t["value"] for t in state.get("tags") or [] if t["key"] == BRANCH_TAG), None)
    print(f"\nBackfill {state['id']}: {state['status']} ({state.get('title') or 'untitled'})")
    print(f"{'asset':<22} {'targeted':>8} {'staged' if branch else 'published':>9} {'held':>5} {'failed':>6}")
    statuses = (state.get("assetBackfillData") or {}).get("assetBackfillStatuses") or []
    problems = 0
    for c in statuses:
        asset = "/".join(c["assetKey"]["path"])
        done, failed, targeted = launch.counts(c)
        # an unpartitioned asset is not versioned: Dagster's materialization is what it published
        unversioned = {"published": done, "held": 0}
        mine = ledger.get(asset, {"published": 0, "held": 0}) if "numPartitionsTargeted" in c else unversioned
        problems += mine["held"] + failed
        print(f"{asset:<22} {targeted:>8} {mine['published']:>9} {mine['held']:>5} {failed:>6}")
    print(
        f"Runs: {len(state['runs'])} ({', '.join(sorted({r['status'] for r in state['runs']})) or 'none yet'}). "
        f"UI: {url.rstrip('/')}/runs/b/{state['id']}"
    )
    if branch:
        print(f"Staged in branch {branch}: consumers read what is published until `backfill-assets branch publish`")
    ok = state["status"] in ("COMPLETED", "COMPLETED_SUCCESS") and problems == 0
    return EXIT_OK if ok or state["status"] not in launch.DONE else EXIT_HELD


def cmd_status(args: argparse.Namespace) -> int:
    state = launch.status(args.url, args.backfill_id)
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
        return EXIT_OK
    return _print_status(load_definitions(args), state, args.url)


def _table_asset(defs: dg.Definitions, name: str) -> Any:
    """The graph node of a derived table named on the command line."""
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey.from_user_string(name)
    tables = sorted(k.to_user_string() for k in graph.get_all_asset_keys() if _is_table(graph.get(k)))
    if graph.has(key) and graph.get(key).is_materializable and not _is_table(graph.get(key)):
        raise UsageError(
            f"{name} is a plain Dagster asset, not a derived table: it has no versions to show, diff or roll back "
            f"(derived tables: {', '.join(tables)})"
        )
    if not graph.has(key) or not graph.get(key).is_materializable:
        raise UsageError(f"unknown asset {name!r}; derived tables: {', '.join(tables)}")
    return graph.get(key)


def _is_table(node: Any) -> bool:
    return node.is_materializable and planning.TABLE_METADATA in node.metadata


def _partition_keys(graph, node: Any, args: argparse.Namespace, required: bool = True) -> list[str] | None:
    """Partition keys from --partition (repeatable), or the scope of --from/--to and --where; None when none is
    given."""
    index = planning.partition_index(node.partitions_def)
    if getattr(args, "partition", None):
        unknown = [p for p in args.partition if p not in index.positions]
        if unknown:
            raise UsageError(f"{node.key.to_user_string()} has no partition {', '.join(unknown)}")
        return list(args.partition)
    where = _where(args)
    if (args.start and args.end) or where:
        if args.start and args.end:
            planning.check_range(graph, {node.key}, args.start, args.end)
        planning.check_where(graph, {node.key}, where)
        return planning.scoped_keys(graph, node.key, args.start, args.end, where)
    if required:
        raise UsageError("give --partition, or --from and --to (and --where for a static dimension)")
    return None


def _write_warehouse(defs: dg.Definitions):
    """A write connection to an existing warehouse (commands that change history never create one)."""
    _read_warehouse(defs, required=True).close()
    return _warehouse_resource(defs).get_connection()


def cmd_history(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    node = _table_asset(defs, args.asset)
    keys = _partition_keys(defs.resolve_asset_graph(), node, args, required=False)
    con = _read_warehouse(defs, required=True)
    try:
        rows = history.versions(con, args.asset, keys)
    finally:
        con.close()
    print(json.dumps(rows, indent=2, default=str) if args.json else history.render_versions(args.asset, rows))
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    node = _table_asset(defs, args.asset)
    graph = defs.resolve_asset_graph()
    keys = _partition_keys(graph, node, args)
    index = planning.partition_index(node.partitions_def)
    radius = planning.blast_radius(graph, {node.key: index.ranges_of(keys)})
    downstream = {i.asset: i.keys for i in radius.tables if i.asset != args.asset}
    with _write_warehouse(defs) as con:
        targets = {args.asset: history.rollback_targets(con, args.asset, keys, args.to_version)}
        if args.cascade:
            targets.update(history.cascade_targets(con, args.asset, keys, downstream))
        before = {a: history.published_versions(con, a) for a in targets}
        explicit = [args.asset] if args.to_version is not None else []
        history.rollback(con, targets, reason=args.reason, actor=None, explicit=explicit)
        after = {a: warehouse.published_partitions(con, a) for a in targets}
        _tell_dagster(con, targets, "rollback", args.reason)
    for asset, versions in targets.items():
        print(f"{asset}: rolled back {plural(len(versions), 'partition')}")
        for key, version in versions.items():
            print(f"  {key}: version {before[asset][key]} -> {version} (content {after[asset][key][2]})")
    resting = {a: k for a, k in downstream.items() if a not in targets}
    if resting:
        print("\nDownstream partitions now rest on changed data (re-materialize them, or roll back with --cascade):")
        for i in radius.tables:
            if i.asset in resting:
                count = f" ({i.partition_count})" if i.partitioned else " (unpartitioned: re-materialize it)"
                print(f"  {i.asset}: {', '.join(i.partitions)}{count}")
    return EXIT_OK


def _decide(args: argparse.Namespace, approve: bool) -> int:
    defs = load_definitions(args)
    node = _table_asset(defs, args.asset)
    keys = _partition_keys(defs.resolve_asset_graph(), node, args, required=False)
    with _write_warehouse(defs) as con:
        if approve:
            done = history.approve(con, args.asset, keys, args.by, args.reason)
            _tell_dagster(con, {args.asset: done}, "approve", args.reason)
            print(
                f"{args.asset}: published {plural(len(done), 'held version')} approved by {args.by}: "
                + ", ".join(f"{k} (version {v})" for k, v in done.items())
            )
        else:
            freed = history.discard(con, args.asset, keys, args.by, args.reason)
            print(f"{args.asset}: discarded the held versions ({freed} rows freed), decided by {args.by}")
    return EXIT_OK


def _tell_dagster(con, changes: dict[str, dict[str, int]], action: str, reason: str | None = None) -> None:
    """Report a pointer change made here to $DAGSTER_HOME's instance (the UI's), when one is set."""
    if os.environ.get("DAGSTER_HOME") and changes:
        with dg.DagsterInstance.get() as instance:
            report_pointer_changes(instance, con, changes, action, reason)


def _metadata(node: Any, key: str) -> Any:
    """A value of an asset's definition metadata (as written by derived_asset), or None."""
    value = node.metadata.get(key)
    return getattr(value, "value", value)


def cmd_diff(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    node = _table_asset(defs, args.asset)
    keys = _partition_keys(defs.resolve_asset_graph(), node, args, required=not args.branch)
    grain = [c.strip() for c in str(_metadata(node, "grain")).split(",")]
    metrics = _metadata(node, "metrics") or {}
    con = _read_warehouse(defs, required=True)
    try:
        if keys is None:  # the branch's partitions of the table
            keys = sorted(catalog.branch_heads(con, args.branch).get(args.asset, {}))
        scheme = planning.scheme_of(node)
        pairs = history.diff_pairs(con, args.asset, keys, args.base, args.target, args.branch)
        result, moved = history.diff_versions(con, args.asset, grain, scheme, metrics, pairs)
    finally:
        con.close()
    if args.json:
        print(
            json.dumps(
                {
                    "asset": args.asset,
                    "versions": {k: {"base": b, "target": t} for k, (b, t) in pairs.items()},
                    "diff": dataclasses.asdict(result),
                    "metrics": [
                        {
                            "metric": m.metric,
                            "before": m.before,
                            "after": m.after,
                            "delta": m.delta,
                            "relative": m.relative,
                            "partitions": [{"partition": k, "before": b, "after": a} for k, b, a in m.partitions],
                        }
                        for m in moved
                    ],
                },
                indent=2,
                default=str,
            )
        )
        return EXIT_OK
    versions = sorted({v for pair in pairs.values() for v in pair})
    print(f"{args.asset}: {plural(len(pairs), 'partition')}, base vs target versions {versions[0]}..{versions[-1]}")
    print(diff.render_diff(result))
    if moved:
        print("\nMetrics (base -> target):")
        for m in moved:
            rel = "-" if m.relative is None else f"{m.relative:+.2%}"
            print(f"  {m.metric}: {m.before:,} -> {m.after:,} ({m.delta:+,}, {rel})")
            for k, b, a, d in m.movers(3):
                print(f"      {k}: {b} -> {a} ({d:+,})")
    return EXIT_OK


def cmd_cutover(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    node = _table_asset(defs, args.asset)
    strategy = _metadata(node, "write_strategy")
    if strategy != "parallel_version":
        raise UsageError(
            f"{args.asset} uses write_strategy {strategy!r}: its runs publish directly, so there is nothing to cut "
            "over (cutover is for parallel_version tables)"
        )
    keys = _partition_keys(defs.resolve_asset_graph(), node, args, required=False)
    with _write_warehouse(defs) as con:
        done = history.cutover(con, args.asset, keys, args.reason)
        _tell_dagster(con, {args.asset: done}, "cutover", args.reason)
    print(f"{args.asset}: published {plural(len(done), 'parallel candidate')}: " + ", ".join(sorted(done)))
    return EXIT_OK


def cmd_vacuum(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    graph = defs.resolve_asset_graph()
    retention = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            rule = _metadata(node, "retention")
            retention[key.to_user_string()] = history.Retention(**rule) if rule else history.Retention()
    brief_dir = project_dir(args) / "backfills"
    brief_ids = sorted(p.stem for p in brief_dir.glob("*.yaml"))
    with _write_warehouse(defs) as con:
        protected = history.brief_protected_versions(con, brief_ids)
        candidates = history.vacuum_candidates(con, retention, protected, None)
        freed = 0 if args.dry_run else history.vacuum(con, candidates)
    rows = sum(c["rows"] for c in candidates)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"vacuum {verb} {len(candidates)} versions, {rows} rows "
        f"({len(protected)} versions kept for briefs: {', '.join(brief_ids) or 'none'})"
    )
    for asset in sorted({c["asset"] for c in candidates}):
        mine = [c for c in candidates if c["asset"] == asset]
        print(f"  {asset}: {len(mine)} versions, {sum(c['rows'] for c in mine)} rows")
    if not args.dry_run and freed != rows:
        print(f"note: {freed} rows were deleted")
    return EXIT_OK


def cmd_notes(args: argparse.Namespace) -> int:
    defs = load_definitions(args)
    con = _read_warehouse(defs)
    if con is None:
        raise UsageError("no warehouse with published data yet")
    which, tag, value = next(
        (w, t, v)
        for w, t, v in (("brief", BRIEF_TAG, args.brief), ("backfill", "dagster/backfill", args.backfill),
                        ("branch", BRANCH_TAG, args.branch))
        if v
    )  # fmt: skip
    try:
        note = changes.note_from_ledger(con, tag, value, title=f"Change note: {which} {value}")
        if which == "branch":
            info = catalog.branch_info(con, value) or {}
            brief_id = info.get("brief")
            if info.get("state") == "open":
                note.pending = f"branch {value} is open: this is what will change when it publishes"
        elif which == "backfill":
            brief_id = next(iter(catalog.tag_values(con, BRIEF_TAG, "dagster/backfill", value)), None)
        else:
            brief_id = args.brief
    finally:
        con.close()
    if not note.assets:
        raise UsageError(f"no publish or hold recorded for {tag}={value}")
    brief_file = project_dir(args) / "backfills" / f"{brief_id}.yaml"
    if brief_id and brief_file.is_file():
        note.brief = briefs.load(brief_file)
        note.title = f"Change note: {note.brief.get('title', brief_id)} ({brief_id})"
    graph = defs.resolve_asset_graph()
    radius = planning.blast_radius(graph, {dg.AssetKey.from_user_string(a): [] for a in note.assets})
    readers = {c.asset: c for c in radius.consumers}
    note.unpartitioned = [i.asset for i in radius.tables if not i.partitioned]
    named = {n.lower() for c in readers.values() for n in (c.label, *c.owners)}
    note.consumers = [f"{c.label} ({', '.join(c.owners) or 'no owner'})" for c in readers.values()]
    note.consumers += [str(s) for s in (note.brief or {}).get("stakeholders", []) if str(s).lower() not in named]
    out = Path(args.out) / value
    out.mkdir(parents=True, exist_ok=True)
    charts = {}
    for change in note.changes:
        if change.movers():
            path = out / f"{change.asset}.{change.metric}.svg"
            path.write_text(changes.svg_chart(change))
            charts[(change.asset, change.metric)] = path.name
    markdown = note.to_markdown(charts)
    (out / "note.md").write_text(markdown)
    print(note.to_json() if args.format == "json" else markdown, end="")
    if args.format == "md":
        print(f"\n(written to {out / 'note.md'} with {len(charts)} charts)")
    return EXIT_OK


def cmd_branch(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.branch:
        raise UsageError(f"branch {args.action} needs the branch id")
    if args.action == "approve" and not (args.by and args.reason):
        raise UsageError("branch approve needs --by (the branch's reviewer) and --reason")
    defs = load_definitions(args)
    if args.action in ("list", "show"):
        con = _read_warehouse(defs, required=True)
        try:
            found = [b for b in catalog.branches(con) if args.action == "list" or b["branch"] == args.branch]
            if not found:
                raise UsageError(f"no branch {args.branch!r}" if args.branch else "no branches yet")
            for b in found:
                b["partitions"] = {a: sorted(p) for a, p in catalog.branch_heads(con, b["branch"]).items()}
                b["held"] = {
                    a: sorted(k for k, (_, status, _) in p.items() if status != "branched")
                    for a, p in catalog.branch_heads(con, b["branch"]).items()
                }
        finally:
            con.close()
        print(json.dumps(found, indent=2, default=str) if args.json else _render_branches(found))
        return EXIT_OK
    said = {
        "approve": f"approved by {args.by}",
        "publish": "published in one transaction",
        "undo": "undone in one transaction; consumers read what they read before it",
        "discard": "discarded; consumers never read it",
    }
    with _write_warehouse(defs) as con:
        changed = history.decide_branch(con, args.action, args.branch, args.by, args.reason)
        _tell_dagster(con, changed, f"branch {args.branch} {args.action}", args.reason)
    print(f"branch {args.branch}: {said[args.action]}")
    for asset, versions in changed.items():
        print(f"  {asset}: {_span_of(sorted(versions))}")
    return EXIT_OK


def _render_branches(found: Sequence[dict[str, Any]]) -> str:
    lines = []
    for b in found:
        review = f", reviewer {b['reviewer']}" if b["reviewer"] else ""
        approved = f", approved by {b['approved_by']}" if b["approved_by"] else ""
        lines.append(f"{b['branch']}: {b['state']}{review}{approved} (opened {b['created_at']:%Y-%m-%d %H:%M} UTC)")
        for asset, keys in b["partitions"].items():
            held = f", held: {_span_of(b['held'][asset])}" if b["held"][asset] else ""
            lines.append(f"  {asset}: {_span_of(keys)}{held}")
    return "\n".join(lines)


def cmd_init_instance(args: argparse.Namespace) -> int:
    try:
        done = init_instance(args.home)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for line in done:
        print(line)
    return EXIT_OK


def _say(args: argparse.Namespace, line: str) -> None:
    if not args.json:
        print(line, flush=True)


def _add_target(cmd: argparse.ArgumentParser) -> None:
    where = cmd.add_mutually_exclusive_group()
    where.add_argument(
        "-f", "--file", help="Python file defining the Definitions (default: ./definitions.py, else the project here)"
    )
    where.add_argument("-m", "--module", help="Python module defining the Definitions, e.g. my_project.definitions")


class _Parser(argparse.ArgumentParser):
    """A usage error in one line (argparse prints the whole usage first), pointing at --help."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backfill-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    mat = sub.add_parser(
        "materialize",
        help="write-audit-publish a date range, one ranged run per partitions definition",
        description="Materialize the selected assets over [--from, --to] in one ranged run per partitions "
        "definition (upstream groups first: daily before weekly and monthly), recorded in $DAGSTER_HOME's "
        "instance when set. Weekly and monthly partitions are included only when their whole window lies in "
        "the range.",
    )
    _add_target(mat)
    mat.add_argument("--select", help="Dagster asset selection, e.g. 'key:events_clean+' (default: all)")
    mat.add_argument("--from", dest="start", type=_date, help="first date, YYYY-MM-DD")
    mat.add_argument("--to", dest="end", type=_date, help="last date, YYYY-MM-DD (inclusive)")
    mat.add_argument("--where", action="append", help="static partitions, NAME=KEY[,KEY], e.g. region=eu (repeatable)")
    mat.add_argument("--only-missing", action="store_true", help="skip groups whose partitions are all published")
    mat.add_argument("--json", action="store_true", help="print a JSON report instead of progress lines")
    mat.add_argument("-v", "--verbose", action="store_true", help="show Dagster's run log")
    mat.add_argument(
        "--tag",
        type=_tag,
        action="append",
        metavar="KEY=VALUE",
        help="a run tag (repeatable), e.g. backfill_assets/brief=<id> to attribute the runs to a brief",
    )
    mat.add_argument("--branch", help="stage into this branch (opened if new) instead of publishing")
    mat.set_defaults(func=cmd_materialize)

    plan = sub.add_parser(
        "plan",
        help="show the blast radius of a backfill: assets, partitions, rows, code versions, consumers",
        description="Every asset and partition a backfill of the selection over [--from, --to] changes, through "
        "the lineage graph and its partition mappings, with rows published now, code versions, owners, the "
        "consumers to notify and an estimate from past runs. --stale plans every partition published under "
        "an older code version than the current definition.",
    )
    _add_target(plan)
    plan.add_argument("--select", help="Dagster asset selection (default: all)")
    plan.add_argument("--from", dest="start", type=_date, help="first date, YYYY-MM-DD")
    plan.add_argument("--to", dest="end", type=_date, help="last date, YYYY-MM-DD (inclusive)")
    plan.add_argument("--where", action="append", help="static partitions, NAME=KEY[,KEY], e.g. region=eu (repeatable)")
    plan.add_argument("--stale", action="store_true", help="plan the partitions published under older code")
    plan.add_argument("--json", action="store_true", help="print stable JSON")
    plan.set_defaults(func=cmd_plan)

    pre = sub.add_parser("preflight", help="check a backfill brief and print its blast radius (exit 1 if it fails)")
    pre.add_argument("brief", help="path of the brief, e.g. backfills/refunds-fix-2025q1.yaml")
    _add_target(pre)
    pre.set_defaults(func=cmd_preflight)

    lau = sub.add_parser("launch", help="preflight a brief, then launch its backfill on a running Dagster")
    lau.add_argument("brief", help="path of the brief")
    _add_target(lau)
    lau.add_argument("--url", default=DEFAULT_URL, help=f"Dagster webserver (default {DEFAULT_URL})")
    lau.add_argument("--wait", action="store_true", help="show progress until the backfill ends, then a summary")
    lau.add_argument("--branch", help="stage the backfill in this branch, published later with branch publish")
    lau.add_argument("--out", default="notes", help="folder for the change note before the run (default notes/)")
    lau.add_argument("--json", action="store_true", help="print JSON: the backfill, its branch, the note (and status)")
    lau.add_argument("--poll-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    lau.set_defaults(func=cmd_launch)

    tri = sub.add_parser(
        "try",
        help="run a brief's backfill over a slice in a throwaway branch: checks, diff, deltas, extrapolated runtime",
    )
    tri.add_argument("brief", help="path of the brief")
    tri.add_argument("--slice", required=True, help="FROM..TO, days in the brief's scope, e.g. 2025-01-01..2025-01-07")
    _add_target(tri)
    tri.add_argument("--keep", action="store_true", help="keep the branch (to diff, publish or discard it later)")
    tri.add_argument("--json", action="store_true", help="print the report as JSON")
    tri.set_defaults(func=cmd_try)

    sta = sub.add_parser("status", help="a launched backfill's state and per-asset summary")
    sta.add_argument("backfill_id")
    _add_target(sta)
    sta.add_argument("--url", default=DEFAULT_URL, help=f"Dagster webserver (default {DEFAULT_URL})")
    sta.add_argument("--json", action="store_true", help="print Dagster's answer as JSON")
    sta.set_defaults(func=cmd_status)

    def table_command(name: str, help_: str, func) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.add_argument("asset", help="the derived table, e.g. revenue_daily")
        _add_target(cmd)
        cmd.add_argument("--partition", action="append", help="a partition key (repeatable)")
        cmd.add_argument("--from", dest="start", type=_date, help="first date of a range")
        cmd.add_argument("--to", dest="end", type=_date, help="last date of a range (inclusive)")
        cmd.add_argument("--where", action="append", help="static partitions, NAME=KEY[,KEY] (repeatable)")
        cmd.set_defaults(func=func)
        return cmd

    his = table_command(
        "history", "every version of each partition (or of those given): status, run, code version, rows, checks",
        cmd_history,
    )  # fmt: skip
    his.add_argument("--json", action="store_true", help="print JSON")
    rol = table_command(
        "rollback", "publish the previous (or a given) version of partitions again, atomically", cmd_rollback
    )
    rol.add_argument("--to-version", type=int, help="the version to publish (with one --partition)")
    rol.add_argument(
        "--cascade", action="store_true", help="also roll back downstream partitions published by the same backfill"
    )
    rol.add_argument("--reason", default="rollback requested on the command line", help="recorded in the ledger")
    rol.set_defaults(changes_history=True)
    for name, func, what in (
        ("approve", lambda a: _decide(a, True), "publish held candidates after review"),
        ("discard", lambda a: _decide(a, False), "delete held candidates after review"),
    ):
        cmd = table_command(name, f"{what} (all held partitions unless --partition/--from/--to)", func)
        cmd.add_argument("--by", required=True, help="who decides (recorded)")
        cmd.add_argument("--reason", required=True, help="why (recorded)")
        cmd.set_defaults(changes_history=True)
    dif = table_command(
        "diff",
        "keyed diff of two versions: schema, rows matched on the grain, per-column "
        "match rates, samples, and every metric before/after",
        cmd_diff,
    )
    dif.add_argument("--base", help="version number, published, previous or held (default: see the docs)")
    dif.add_argument("--target", help="version number, published, previous or held")
    dif.add_argument("--branch", help="compare what is published with the branch's versions (default: its partitions)")
    dif.add_argument("--json", action="store_true", help="print JSON")
    cut = table_command("cutover", "publish parallel candidates (write_strategy parallel_version)", cmd_cutover)
    cut.add_argument("--reason", default="cutover requested on the command line", help="recorded in the ledger")
    cut.set_defaults(changes_history=True)
    vac = sub.add_parser(
        "vacuum",
        help="remove versions beyond each table's retention; never published ones, "
        "held ones, or versions a brief in backfills/ still needs",
    )
    _add_target(vac)
    vac.add_argument("--dry-run", action="store_true", help="report what would be removed, change nothing")
    vac.set_defaults(func=cmd_vacuum, changes_history=True)

    notes = sub.add_parser("notes", help="a change note for stakeholders: what moved, why, validation, who to tell")
    which = notes.add_mutually_exclusive_group(required=True)
    which.add_argument("--brief", help="the brief id (its runs are tagged backfill_assets/brief)")
    which.add_argument("--backfill", help="the Dagster backfill id")
    which.add_argument("--branch", help="the branch id (open: what will change when it publishes)")
    notes.add_argument("--format", choices=("md", "json"), default="md")
    notes.add_argument("--out", default="notes", help="folder for note.md and the charts (default notes/)")
    _add_target(notes)
    notes.set_defaults(func=cmd_notes)

    bra = sub.add_parser(
        "branch",
        help="a backfill staged in a branch: list, show, approve, publish (every table at once), discard or undo it",
        description="Runs tagged backfill_assets/branch=ID (materialize --branch ID) stage into the branch, and "
        "read the tables through it; consumers' views change only when the branch publishes, every asset and "
        "partition in one transaction.",
    )
    bra.add_argument("action", choices=("list", "show", *history.BRANCH_ACTIONS))
    bra.add_argument("branch", nargs="?", help="the branch id (all but list)")
    _add_target(bra)
    bra.add_argument("--by", help="who approves, publishes or discards (recorded; approve: the reviewer)")
    bra.add_argument("--reason", help="why (recorded; required to approve)")
    bra.add_argument("--json", action="store_true", help="print JSON")
    bra.set_defaults(func=cmd_branch)

    ini = sub.add_parser(
        "init-instance",
        help="set up a Dagster home for a backfill-assets project: the shipped dagster.yaml and the duckdb pool limit",
    )
    ini.add_argument("--home", help="the Dagster home (default: $DAGSTER_HOME)")
    ini.set_defaults(func=cmd_init_instance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Dagster's own parser of `not ...` selections passes a beta parameter and warns the user about it.
    warnings.filterwarnings("ignore", message="Parameter `include_sources`", category=dg.BetaWarning)
    try:
        return args.func(args)
    except (warehouse.WarehouseLockTimeout, warehouse.BranchError) as e:  # not usage errors: a lock, a refusal
        print(f"backfill-assets: {e}", file=sys.stderr)
        return EXIT_HELD
    except (
        UsageError,
        planning.PlanError,
        briefs.BriefError,
        history.HistoryError,
        warehouse.WarehouseError,
    ) as e:
        message = str(e)
        if getattr(args, "changes_history", False) and "Nothing was changed" not in message:
            message = message.rstrip(".") + ". Nothing was changed."
        print(f"backfill-assets: {message}", file=sys.stderr)
        return EXIT_USAGE
    except launch.DagsterError as e:
        print(f"backfill-assets: {e}", file=sys.stderr)
        return EXIT_DAGSTER
    except BrokenPipeError:  # output piped into head or less that exited early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
