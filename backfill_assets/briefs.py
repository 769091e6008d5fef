"""Backfill briefs as code: one YAML file per backfill, and the preflight gate every launch passes.

A brief (``backfills/<id>.yaml``)::

    id: refunds-fix-2025q1                 # letters, digits, - and _; the file's name without .yaml
    title: Net revenue with refunds, Q1 2025
    reason: Why history must change, in words a stakeholder understands.
    owner: team:finance-analytics          # who runs it and answers questions
    reviewer: lead@example.com             # who approved it
    risk: metric-changing repair           # one of RISK_CLASSES
    scope:
      select: key:revenue_daily            # Dagster asset selection
      from: 2025-01-01                     # first day (inclusive)
      to: 2025-03-31                       # last day (inclusive)
      where: {region: [eu]}                # optional: static keys by dimension or partition column ("EU only")
    write_strategy: partition_overwrite    # one of WRITE_STRATEGIES
    batch_size: 90                         # most partitions a single run may write
    expected_changes:                      # what should move, and by how much at most
      - asset: revenue_daily
        metric: net_revenue_usd
        max_relative_change: 0.15
    rollback: How to undo it (the previous versions stay until retention removes them).
    stakeholders:                          # consumer names or owners; must cover the blast radius
      - Finance revenue dashboard
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from . import catalog, planning
from .audit import plural

RISK_CLASSES = (
    "low-risk enrichment",
    "metric-changing repair",
    "schema migration",
    "production-critical rebuild",
)
# Re-running an idempotent strategy over the same range gives the same published data.
WRITE_STRATEGIES = {"partition_overwrite": True, "merge_by_key": True, "parallel_version": True, "append": False}
SECTIONS = (
    "id",
    "title",
    "reason",
    "owner",
    "reviewer",
    "risk",
    "scope",
    "write_strategy",
    "batch_size",
    "expected_changes",
    "rollback",
    "stakeholders",
)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")


class BriefError(ValueError):
    """A brief that cannot be read at all (missing file, not YAML, not a mapping)."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Preflight:
    """The checklist of one brief, and its blast radius when the scope resolves."""

    brief: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    plan: planning.Plan | None = None

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def render(self) -> str:
        lines = [f"Preflight of brief {self.brief.get('id', '?')!s}: {self.brief.get('title', '')!s}", ""]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        verdict = "passed" if self.passed else f"FAILED ({plural(sum(not c.ok for c in self.checks), 'problem')})"
        lines += ["", f"Preflight {verdict}."]
        if self.plan is not None:
            lines += ["", planning.render(self.plan)]
        return "\n".join(lines)


def load(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise BriefError(f"no brief at {path}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise BriefError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise BriefError(f"{path} must be a YAML mapping of the brief's sections, not {type(data).__name__}")
    data["_path"] = str(file)
    return data


def preflight(brief: dict[str, Any], defs: dg.Definitions, con=None) -> Preflight:
    """Check every section; resolve the scope into a blast radius; compare it with the stakeholders."""
    result = Preflight(brief)
    add = result.checks.append
    blank = [s for s in SECTIONS if _blank(brief.get(s))]
    add(Check("sections", not blank, "all present" if not blank else f"missing or blank: {', '.join(blank)}"))

    brief_id = str(brief.get("id", ""))
    stem = Path(brief.get("_path", "")).stem
    id_ok = bool(_ID.match(brief_id)) and (not stem or stem == brief_id)
    add(Check("id", id_ok, brief_id if id_ok else f"{brief_id!r} must match {_ID.pattern} and the file name {stem!r}"))

    risk = brief.get("risk")
    add(
        Check(
            "risk",
            risk in RISK_CLASSES,
            str(risk) if risk in RISK_CLASSES else f"{risk!r} is not one of: {', '.join(RISK_CLASSES)}",
        )
    )

    strategy = brief.get("write_strategy")
    if strategy not in WRITE_STRATEGIES:
        add(Check("write strategy", False, f"{strategy!r} is not one of: {', '.join(WRITE_STRATEGIES)}"))
    else:
        idempotent = WRITE_STRATEGIES[strategy]
        add(
            Check(
                "write strategy",
                idempotent,
                f"{strategy} is "
                + (
                    "idempotent"
                    if idempotent
                    else "not idempotent: a re-run would duplicate rows; use partition_overwrite"
                ),
            )
        )

    graph = defs.resolve_asset_graph()
    plan = _scope_plan(brief.get("scope"), graph, add)
    if plan is not None:
        result.plan = planning.add_warehouse_facts(plan, con)
        _check_batch_size(brief.get("batch_size"), plan, graph, add)
        _check_expected_changes(brief.get("expected_changes"), plan, graph, add)
        _check_stakeholders(brief.get("stakeholders"), plan, add)
        if con is not None:
            _check_inputs(plan, graph, con, add)
        plan.scope = {"description": f"brief {brief_id}", "brief": brief_id, **(brief.get("scope") or {})}
    return result


def _check_inputs(plan: planning.Plan, graph, con, add) -> None:
    """Every partition of the blast radius reads upstream partitions that are published or that the backfill
    rebuilds first; otherwise its run would be refused by the inputs gate."""
    selected = {dg.AssetKey.from_user_string(i.asset) for i in plan.tables}
    _, waiting = planning.materialize_runs(graph, plan, selected, catalog.published_keys(con))
    if not waiting:
        add(Check("inputs", True, "every partition's upstream partitions are published or rebuilt first"))
        return
    named = "; ".join(
        f"{a} {', '.join(sorted(parts)[:3])}{' ...' if len(parts) > 3 else ''}" for a, parts in sorted(waiting.items())
    )
    add(Check("inputs", False, f"partitions would be refused, reading unpublished upstream partitions: {named}"))


def _blank(value: Any) -> bool:
    return value is None or (
        isinstance(value, str | list | dict) and not (value.strip() if isinstance(value, str) else value)
    )


def _scope_plan(scope: Any, graph, add) -> planning.Plan | None:
    if not isinstance(scope, dict) or _blank(scope.get("select")):
        add(Check("scope", False, "scope must have select, and from and to (or where, for static partitions)"))
        return None
    try:
        where = scope_where(scope)
        dated = scope.get("from") is not None or scope.get("to") is not None
        start, end = (day(scope.get("from"), "from"), day(scope.get("to"), "to")) if dated else (None, None)
        keys = planning.resolve_selection(graph, scope.get("select"))
        if dated:
            planning.check_range(graph, keys, start, end)
        planning.check_where(graph, keys, where)
        seeds = planning.selection_seeds(graph, keys, start, end, where)
    except ValueError as e:  # PlanError too
        message = str(e)
        for option in ("select", "from", "to", "where"):
            message = message.replace(f"--{option}", option)
        add(Check("scope", False, message))
        return None
    described = " ".join([*([f"{start}..{end}"] if dated else []), *(f"{n}={','.join(k)}" for n, k in where.items())])
    empty = [k.to_user_string() for k, r in seeds.items() if not r and graph.get(k).partitions_def is not None]
    if empty:
        add(Check("scope", False, f"no whole partition of {', '.join(empty)} lies in {described}"))
        return None
    ends = [planning.partition_index(p).keys[-1] for p in planning.time_defs(graph, keys)]
    exist = f" (partitions exist up to {max(ends)})" if ends else ""
    add(Check("scope", True, f"{scope.get('select')} over {described}{exist}"))
    return planning.blast_radius(graph, seeds)


def scope_where(scope: dict[str, Any]) -> dict[str, list[str]]:
    """A scope's static selection, ``where: {region: [eu]}`` (a key alone for one), as name -> keys."""
    where = scope.get("where") or {}
    if not isinstance(where, dict) or not all(isinstance(k, str) for k in where):
        raise ValueError("scope.where must map a dimension to its keys, e.g. where: {region: [eu]}")
    return {name: [str(k) for k in (keys if isinstance(keys, list) else [keys])] for name, keys in where.items()}


def day(value: Any, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"scope.{name} {value!r} is not a date; use YYYY-MM-DD") from None


def _check_batch_size(batch_size: Any, plan: planning.Plan, graph, add) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        add(Check("batch size", False, f"{batch_size!r} must be a whole number of partitions >= 1"))
        return
    too_big = []
    for impact in plan.tables:
        node = graph.get(dg.AssetKey.from_user_string(impact.asset))
        # Dagster runs each range alone (a time x static definition's: one static key's days)
        largest = max(
            (len(planning.range_keys(node.partitions_def, *r)) for r in impact.ranges), default=impact.partition_count
        )
        policy = node.backfill_policy
        per_run = (
            largest
            if policy is None or policy.max_partitions_per_run is None
            else min(policy.max_partitions_per_run, largest)
        )
        if per_run > batch_size:
            too_big.append(f"{impact.asset} ({per_run} per run)")
    add(
        Check(
            "batch size",
            not too_big,
            f"at most {batch_size} partitions per run"
            if not too_big
            else f"these assets' backfill policies write more than {batch_size} partitions per run: "
            f"{', '.join(too_big)}; raise batch_size or set partitions_per_run on their specs",
        )
    )


def _check_expected_changes(changes: Any, plan: planning.Plan, graph, add) -> None:
    if not isinstance(changes, list) or not changes:
        add(Check("expected changes", False, "list each metric expected to move: asset, metric, max_relative_change"))
        return
    affected = {i.asset for i in plan.tables}
    problems = []
    for change in changes:
        if not isinstance(change, dict):
            problems.append(f"{change!r} is not a mapping")
            continue
        asset, metric = change.get("asset"), change.get("metric")
        if asset not in affected:
            problems.append(f"{asset!r} is not in the blast radius")
            continue
        metrics = graph.get(dg.AssetKey.from_user_string(asset)).metadata.get("metrics")
        declared = set(getattr(metrics, "value", metrics) or ())
        if metric not in declared:
            problems.append(f"{asset} declares no metric {metric!r} (it has: {', '.join(sorted(declared)) or 'none'})")
        bound = change.get("max_relative_change")
        if not isinstance(bound, int | float) or isinstance(bound, bool) or bound < 0:
            problems.append(f"{asset}.{metric}: max_relative_change must be a number >= 0")
    add(Check("expected changes", not problems, "; ".join(problems) or f"{len(changes)} metrics with bounds"))


def _check_stakeholders(stakeholders: Any, plan: planning.Plan, add) -> None:
    named = {str(s).strip().lower() for s in stakeholders} if isinstance(stakeholders, list) else set()
    missing = [
        c.label
        for c in plan.consumers
        if not ({c.label.lower(), c.asset.lower()} | {o.lower() for o in c.owners}) & named
    ]
    add(
        Check(
            "stakeholders",
            not missing,
            "every consumer in the blast radius is listed"
            if not missing
            else f"consumers in the blast radius not among the stakeholders: {', '.join(missing)}",
        )
    )
