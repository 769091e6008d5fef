"""Write-audit-publish for one run of one table: stage a new version of each partition next to the
published one, audit it, and flip the pointer only when every check passes; otherwise hold it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from . import audit, catalog, sqltext, warehouse
from . import partitions as schemes
from .partitions import Bound
from .spec import TableSpec, quote_ident

SOURCE_VIEW = "_bfa_source"
MERGED_VIEW = "_bfa_merged"


@dataclass(frozen=True)
class TransformContext:
    """What a Python transform gets: an open connection and the partitions it must produce: the window (end
    exclusive; dates or timestamps, as the partition column holds them; None without a time dimension) and the
    static keys (empty without a static dimension)."""

    con: duckdb.DuckDBPyConnection
    start: Bound | None
    end: Bound | None
    partition_keys: Sequence[str]
    params: Mapping[str, Any]
    keys: Sequence[str] = ()

    def sql(self, query: str, **extra: Any) -> duckdb.DuckDBPyRelation:
        """Run `query` with ``$start``, ``$end``, ``$keys`` (those the table's partitions have) and the asset's
        params bound (plus `extra`)."""
        scope = {"start": self.start, "end": self.end} if self.start is not None else {}
        values = {**self.params, **scope, **({"keys": list(self.keys)} if self.keys else {}), **extra}
        query = sqltext.statement(query, "the transform's SQL")
        return self.con.sql(query, params=warehouse.sql_params(query, values))


Transform = str | Callable[[TransformContext], "duckdb.DuckDBPyRelation | pd.DataFrame"]


@dataclass
class RunReport:
    """What one write-audit-publish run did."""

    asset: str
    # "publish", "candidate" (parallel_version: kept for cutover), "branch" (kept in a branch), "hold" or "refuse"
    outcome: str
    outcomes: list[audit.CheckOutcome]
    partitions: dict[str, tuple[int, int, str]]  # key -> (version, rows, content hash)
    metrics_before: dict[str, dict[str, Any]]  # key -> metric -> value
    metrics_after: dict[str, dict[str, Any]]
    transform_s: float
    audit_s: float
    keys: list[str]  # the run's partitions
    # partition -> the late inputs it was published without (TableSpec.incomplete_inputs="provisional")
    provisional: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome not in ("hold", "refuse")

    @property
    def published(self) -> bool:
        return self.outcome == "publish"

    @property
    def rows(self) -> int:
        return sum(n for _, n, _ in self.partitions.values())

    @property
    def failed(self) -> list[audit.CheckOutcome]:
        """The checks that stopped the publish."""
        return [o for o in self.outcomes if o.blocks]

    def failure_message(self) -> str:
        keys = sorted(self.keys)
        where = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
        checks = "; ".join(f"check '{o.name}' failed: {o.summary}" for o in self.failed)
        if self.outcome == "refuse":
            return (
                f"{self.asset} [{where}] not run: {checks}. Nothing was computed and published data is unchanged; "
                "materialize those upstream partitions first."
            )
        return (
            f"{self.asset} [{where}] held, not published: {checks}. "
            "Published data is unchanged; the candidate is kept as a held version for inspection."
        )


def write_audit_publish(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    transform: Transform,
    partition_keys: Sequence[str],
    *,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    record: Mapping[str, Any] | None = None,
    actor: str | None = None,
    reason: str | None = None,
    log: Callable[[str], None] | None = None,
    inputs: Mapping[str, Sequence[Any]] | None = None,
    branch: str | None = None,
) -> RunReport:
    """Run `transform` for `partition_keys` and publish the result only if every check passes.

    `params` are bound into the transform and rule SQL; `record` is extra run context stored in
    the ledger (run tags, brief id, ...); secrets belong in `params`, never in `record`. The ledger
    names `actor` (default: the OS user) and `reason` (default: the run; a hold's reason is its failure).
    `inputs`: partition -> the upstream partitions it reads (:func:`planning.required_inputs`); when one is
    not published the run is refused before the transform runs (outcome "refuse", nothing staged).
    A range longer than ``spec.partitions_per_write`` is staged (and reconciled) in slices; each write is
    reported to `log`. In a `branch` (opened if new), a passing run is kept in the branch (outcome "branch")
    and publishes with it (:func:`warehouse.publish_branch`); the transform and the checks read every other table
    through the branch, and its passing versions count as published inputs.
    """
    if not partition_keys:
        raise ValueError(f"{spec.name}: no partitions to write")
    params = dict(params or {})
    if branch is not None:
        warehouse.open_branch(con, branch, actor=actor)
    overlay = warehouse.branch_overlay(con, branch, spec.name) if branch else []
    try:
        return _write_audit_publish(
            con, spec, transform, partition_keys, run_id, params, record, actor, reason, log, inputs, branch,
            warehouse.BRANCH_SELF if warehouse.BRANCH_SELF in overlay else None,
        )  # fmt: skip
    finally:
        warehouse.drop_overlay(con, overlay)


def _write_audit_publish(
    con, spec, transform, partition_keys, run_id, params, record, actor, reason, log, inputs, branch, table_view
) -> RunReport:
    gate, provisional = audit.check_inputs(con, spec, inputs or {}, branch)
    if gate.blocks:
        report = RunReport(spec.name, "refuse", [gate], {}, {}, {}, 0.0, 0.0, list(partition_keys))
        catalog.ledger(
            con, spec.name, "refuse", run_id, partition_keys=list(partition_keys), code_version=spec.code_version,
            checks=_checks_json([gate]), reason=report.failure_message(), actor=actor,
        )  # fmt: skip
        return report
    scheme = spec.scheme
    slices = scheme.slices(partition_keys, spec.partitions_per_write)
    partitions, window = [(k, scheme.value(k)) for part in slices for k in part], scheme.params(partition_keys)
    warehouse.abandon_orphans(con, spec.name)
    cand = warehouse.allocate(con, spec.name, partitions, run_id, spec.code_version)
    try:
        t0 = time.perf_counter()
        produced: dict[str, str] = {}
        for i, part in enumerate(slices, 1):
            started = time.perf_counter()
            produced.update(_stage(con, spec, transform, cand, part, params))
            if log and len(slices) > 1:
                log(
                    f"{spec.name}: staged {part[0]}..{part[-1]} "
                    f"(slice {i} of {len(slices)}) in {time.perf_counter() - started:.1f}s"
                )
        warehouse.load_run_table(con, [(k, d, cand.versions[k]) for k, d in partitions])
        t1 = time.perf_counter()
        warehouse.create_candidate_views(con, spec.name, scheme.expr())
        stats, profile = warehouse.profile_versions(
            con,
            spec.name,
            [*cand.versions.values(), cand.stray_version],
            *audit.profile_aggregates(con, spec),
            columns=list(produced),
        )
        profile_s = time.perf_counter() - t1  # the one scan of the staged rows most checks read
        previous = warehouse.published_partitions(con, spec.name)
        outcomes, before, after = _audit(
            con,
            spec,
            {**params, **window},
            slices,
            rows={k: stats[v][0] for k, v in cand.versions.items()},
            previous_rows={k: previous[k][1] for k in cand.versions if k in previous},
            profile={k: profile[v] for k, v in cand.versions.items() if v in profile},
            stray_rows=stats[cand.stray_version][0],
            columns=produced,
            table_view=table_view,
        )
        t2 = time.perf_counter()
        outcomes.insert(0, gate)
        passed = not any(o.blocks for o in outcomes)
        kept = "branch" if branch else "candidate" if spec.write_strategy == "parallel_version" else "publish"
        report = RunReport(
            spec.name,
            kept if passed else "hold",
            outcomes,
            {k: (v, *stats[v]) for k, v in cand.versions.items()},
            before,
            after,
            t1 - t0,
            t2 - t1,
            [k for k, _ in partitions],
            provisional if passed else {},
        )
        ledger = {
            "checks": _checks_json(outcomes),
            "metrics": {"before": before, "after": after},
            "params": {
                catalog.WINDOW: window,
                catalog.TIMINGS: {"transform": report.transform_s, "audit": report.audit_s, "profile": profile_s},
                **(record or {}),
            },
        }
    except BaseException:
        catalog.finished(cand)
        warehouse.abandon_orphans(con, spec.name)
        raise
    why = (reason or f"run {run_id}") if report.passed else report.failure_message()
    try:  # one transaction; if it does not commit, the staged versions are an orphan the next run abandons
        warehouse.decide(
            con, cand, stats, outcome=report.outcome, columns=list(produced), version_metrics=after,
            provisional=report.provisional, reason=why, actor=actor, branch=branch, inputs=inputs, **ledger,
        )  # fmt: skip
    finally:
        catalog.finished(cand)
    return report


def _checks_json(outcomes: Sequence[audit.CheckOutcome]) -> dict[str, Any]:
    return {o.name: catalog.CheckRecord(o.passed, o.summary, o.figures, o.seconds, o.warn).to_json() for o in outcomes}


def audit_published(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, params: Mapping[str, Any] | None = None
) -> list[audit.CheckOutcome]:
    """Run the table's checks against everything published now (nothing is written)."""
    published = warehouse.published_partitions(con, spec.name)
    if not published:
        return [
            audit.CheckOutcome(name, False, f"{spec.name} has no published partitions to check")
            for name in audit.check_names(spec)
        ]
    scheme = spec.scheme
    window, slices = scheme.params(list(published)), scheme.slices(list(published), spec.partitions_per_write)
    warehouse.load_run_table(con, [(k, scheme.value(k), published[k][0]) for part in slices for k in part])
    warehouse.create_published_views(con, spec.name)
    versions = {k: v for k, (v, _, _) in published.items()}
    _, profile = warehouse.profile_versions(
        con, spec.name, list(versions.values()), *audit.profile_aggregates(con, spec)
    )
    outcomes, _, _ = _audit(
        con,
        spec,
        {**(params or {}), **window},
        slices,
        rows={k: v[1] for k, v in published.items()},
        previous_rows={},
        profile={k: profile[v] for k, v in versions.items() if v in profile},
        cross_partition=False,  # the candidate is the whole table: duplicates across partitions are duplicates
    )
    return [audit.provisional_published(catalog.provisional(con, spec.name)), *outcomes]


def _stage(con, spec, transform, cand, keys, params) -> list[tuple[str, str]]:
    """Stage the rows of some of the run's partitions in one statement. The transform runs for their scope (see
    partitions.Scheme.params) and ``_bfa_run`` lists only them, so a row it returns outside them gets the stray
    version."""
    scheme = spec.scheme
    warehouse.load_run_table(con, [(k, scheme.value(k), cand.versions[k]) for k in keys])
    _create_source_view(con, spec, transform, scheme.params(keys), keys, params)
    staged_from = SOURCE_VIEW
    if spec.write_strategy == "merge_by_key" and spec.missing_keys == "keep":
        warehouse.create_merge_view(con, spec.name, spec.grain, scheme.expr("p."), SOURCE_VIEW, MERGED_VIEW)
        staged_from = MERGED_VIEW
    return warehouse.stage(con, cand, scheme.expr("s."), staged_from)


def _audit(
    con,
    spec,
    params,
    slices,
    *,
    rows,
    previous_rows,
    profile,
    stray_rows=0,
    columns=None,
    cross_partition=True,
    table_view=None,  # the table's other partitions as the run sees them (in a branch: the branch's), not main's
):
    by_value = {schemes.hashable(spec.scheme.value(k)): k for part in slices for k in part}
    after = {d: audit.profiled_metrics(profile[k]) for d, k in by_value.items() if k in profile and spec.metrics}
    before = audit.metric_values(con, spec, "previous")
    null_keys = sum(values[("null_keys",)] for values in profile.values())
    outcomes = []

    def run(check, *args):
        started = time.perf_counter()
        outcomes.append(check(*args))
        outcomes[-1].seconds = time.perf_counter() - started

    published = table_view or f"main.{quote_ident(spec.name)}"
    published = published if cross_partition and warehouse.table_exists(con, spec.name) else None
    run(audit.check_unique, con, spec, null_keys, published)
    run(audit.check_complete, spec, rows, previous_rows, profile, stray_rows)
    if spec.rules:
        run(audit.check_reconciled, con, spec, params, after, slices)
    if spec.columns:
        run(audit.check_schema, con, spec, columns)
    if spec.personal_data:
        run(audit.check_private, spec, profile)

    def keyed(values):  # in the order the run writes its partitions
        return {k: values[d] for d, k in by_value.items() if d in values}

    return outcomes, keyed(before), keyed(after)


def _create_source_view(con, spec, transform, window, keys, params) -> None:
    if isinstance(transform, str):
        sql = sqltext.statement(transform, f"{spec.name}'s transform")
        rel = con.sql(sql, params=warehouse.sql_params(sql, {**params, **window}))
    else:
        scope = {"start": window.get("start"), "end": window.get("end"), "keys": window.get("keys", ())}
        rel = transform(TransformContext(con, partition_keys=keys, params=params, **scope))
        if isinstance(rel, pd.DataFrame):
            declared = {name: col.type for name, col in spec.columns.items()}
            warehouse.read_frame(con, rel, SOURCE_VIEW, declared, f"{spec.name}'s transform")
            return
        if not isinstance(rel, duckdb.DuckDBPyRelation):
            raise TypeError(
                f"{spec.name}: the transform must return a DuckDB relation or a pandas DataFrame, "
                f"not {type(rel).__name__}"
            )
    # this connection's own (a relation's create_view would write a view into the warehouse file, for everyone)
    con.execute(f"DROP VIEW IF EXISTS temp.main.{SOURCE_VIEW}")
    con.register(SOURCE_VIEW, rel)
