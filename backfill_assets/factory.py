"""Turn a :class:`TableSpec` and a transform into a partitioned, write-audit-publish Dagster asset."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster_shared.check import CheckError

from . import audit, catalog, changes, history, planning, sqltext, warehouse
from .publish import RunReport, Transform, audit_published, write_audit_publish
from .spec import Consumer, SpecError, TableSpec

POOL = "duckdb"
PROVISIONAL_METADATA = "provisional: published without"  # partition metadata naming the late inputs it lacks
WAREHOUSE_KEY = "warehouse"
BRIEF_TAG = "backfill_assets/brief"  # run tag: the brief a backfill was launched from
OWNER_TAG = "backfill_assets/owner"  # run tag: the brief's owner, whom the ledger records as the actor
BRANCH_TAG = "backfill_assets/branch"  # run tag: the branch the run stages into (published later, as one)

ParamsFn = Callable[[], Mapping[str, Any]]


def derived_asset(
    spec: TableSpec,
    transform: Transform,
    *,
    deps: Sequence[dg.AssetDep | dg.AssetKey | str | dg.AssetsDefinition | dg.AssetSpec] = (),
    params: Mapping[str, Any] | ParamsFn | None = None,
) -> dg.AssetsDefinition:
    """Build the asset for `spec`.

    `transform` is SQL (``$start``/``$end`` bound to the window, end exclusive, plus `params`) or a
    function of a :class:`TransformContext` returning a DuckDB relation or DataFrame. It must
    return the rows of every partition in the window. `deps` are upstream assets (an
    ``AssetDep`` carries a partition mapping); the transform reads their published relations.
    `params` (or a function returning them, called at run time, e.g. to read a secret from the
    environment) are bound into the SQL and are never recorded.

    A run stages its rows as new versions, runs the checks, and publishes atomically only if
    every check passes; otherwise it records the failed checks and fails with the reason,
    leaving the published data untouched. Selecting only the checks (the UI's "Execute
    checks") audits everything published now.
    """
    if isinstance(transform, str):
        try:
            sqltext.statement(transform, f"{spec.name}'s transform")
        except ValueError as e:
            raise SpecError(str(e)) from None
    names = audit.check_names(spec)
    check_specs = [
        dg.AssetCheckSpec(n, asset=spec.key, blocking=True, description=audit.CHECK_DESCRIPTIONS[n]) for n in names
    ]

    @dg.multi_asset(
        name=spec.name,
        specs=[_asset_spec(spec, deps)],
        check_specs=check_specs,
        can_subset=True,
        partitions_def=spec.partitions,
        backfill_policy=spec.backfill_policy,
        pool=POOL,
        required_resource_keys={WAREHOUSE_KEY},
    )
    def _asset(context: dg.AssetExecutionContext):
        warehouse = getattr(context.resources, WAREHOUSE_KEY)
        bound = params() if callable(params) else dict(params or {})
        with warehouse.get_connection() as con:
            if spec.key not in context.selected_asset_keys:
                yield from _check_results(context, spec, audit_published(con, spec, bound))
                return
            keys = context.partition_keys
            context.log.info(f"{spec.name}: writing {len(keys)} partitions {keys[0]}..{keys[-1]} as a new version")
            graph = context.job_def.asset_layer.asset_graph
            branch = context.run.tags.get(BRANCH_TAG) or None
            if branch and catalog.branch_info(con, branch) is None:
                _announce_branch(context, branch)  # this run opens it (a UI backfill with the branch tag)
            report = write_audit_publish(
                con,
                spec,
                transform,
                keys,
                run_id=context.run.run_id,
                params=bound,
                record={catalog.RUN_TAGS: {k: v for k, v in context.run.tags.items() if not k.startswith(".")}},
                log=context.log.info,
                inputs=planning.required_inputs(graph, spec.key, keys, planning.upstream_tables(graph, spec.key)),
                branch=branch,
                **_who_and_why(context.run),
            )
            # a candidate kept aside (branch, parallel_version) is not what consumers read: Dagster is told that too
            aside = {} if report.published or not report.passed else catalog.published_partitions(con, spec.name)
        # Every check gates the publish; Dagster is told only the outcomes of the checks it selected.
        results = _check_results(context, spec, report.outcomes)
        if not report.passed:
            yield from results
            raise dg.Failure(
                description=report.failure_message(), metadata={"held_partitions": len(keys)}, allow_retries=False
            )
        verb = "published" if report.published else f"kept as a parallel candidate ({spec.name}__candidate) of"
        if report.outcome == "branch":
            verb = f"staged in branch {context.run.tags[BRANCH_TAG]} (published with it):"
        if report.provisional:
            verb = "provisionally published"
            context.log.warning(f"{spec.name}: {report.outcomes[0].summary}")
        context.log.info(
            f"{spec.name}: {verb} {len(keys)} partitions, {report.rows} rows "
            f"(transform {report.transform_s:.2f}s, audit {report.audit_s:.2f}s)"
        )
        for key in keys:
            md = _partition_metadata(report, key)
            if not report.published:
                md.update(published=False, consumers_read=aside[key][0] if key in aside else "nothing published")
            context.add_asset_metadata(md, asset_key=spec.key, partition_key=key)
        metadata = {**_run_metadata(report), "change_note": dg.MetadataValue.md(_change_note(spec, report, context))}
        yield dg.MaterializeResult(asset_key=spec.key, metadata=metadata, check_results=results)
        if not report.published:  # the partition's latest materialization in Dagster is what consumers read again
            kept = {k: aside[k] for k in keys if k in aside}
            where = f"branch {context.run.tags[BRANCH_TAG]}" if report.outcome == "branch" else "a parallel candidate"
            _report_published(context.instance, spec.name, kept, f"run {context.run.run_id[:8]} kept in {where}")

    return _asset


def _announce_branch(context: dg.AssetExecutionContext, branch: str) -> None:
    """Tell every table and consumer of the branch's blast radius that it is staging, as ``launch --branch`` does:
    the blast radius of the Dagster backfill's whole target when a backfill launched the run, else of the run's."""
    backfill_id = context.run.tags.get("dagster/backfill")
    backfill = context.instance.get_backfill(backfill_id) if backfill_id else None
    graph, targeted = _location_graph(context), {}
    if backfill is not None and backfill.asset_backfill_data is not None:
        for target in backfill.asset_backfill_data.target_subset.iterate_asset_partitions():
            targeted.setdefault(target.asset_key, []).append(target.partition_key)
    else:
        targeted = {key: list(context.partition_keys) for key in context.selected_asset_keys}
    seeds = {}
    for key, keys in targeted.items():
        pdef = graph.get(key).partitions_def
        seeds[key] = planning.partition_index(pdef).ranges_of(keys) if pdef is not None else []
    plan = planning.blast_radius(graph, seeds)
    who = f"Dagster backfill {backfill_id}" if backfill_id else f"run {context.run.run_id}"
    notice = changes.maintenance_notice(plan, branch, who, reviewer=None)
    told = announce(context.instance, plan, notice)
    context.log.info(f"branch {branch} opened; maintenance notice on {told} assets: {notice}")


def _location_graph(context: dg.AssetExecutionContext):
    """The code location's whole asset graph (a run's job holds only the assets it runs); an in-process run
    (``dg.materialize``) belongs to no code location and has only its job's."""
    try:
        return context.repository_def.asset_graph
    except CheckError:
        return context.job_def.asset_layer.asset_graph


def announce(instance: dg.DagsterInstance, plan: planning.Plan, text: str) -> int:
    """Report `text` as an observation of every table and consumer of `plan` (what their pages in Dagster show
    while a branch is open); returns how many assets were told."""
    for impact in plan.impacts:
        instance.report_runless_asset_event(
            dg.AssetObservation(asset_key=dg.AssetKey.from_user_string(impact.asset), description=text)
        )
    return len(plan.impacts)


def _who_and_why(run: dg.DagsterRun) -> dict[str, str | None]:
    """The ledger's actor and reason for a run: the brief's owner and id when a brief launched it, else the
    Dagster backfill or the run (the actor then defaults to the OS user running the step)."""
    tags = run.tags
    if tags.get(BRIEF_TAG):
        reason = f"backfill brief {tags[BRIEF_TAG]}"
    elif tags.get("dagster/backfill"):
        reason = f"Dagster backfill {tags['dagster/backfill']}"
    else:
        reason = f"run {run.run_id}"
    return {"actor": tags.get(OWNER_TAG) or tags.get("dagster/user"), "reason": reason}


def _asset_spec(spec: TableSpec, deps) -> dg.AssetSpec:
    columns = dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                col.type,
                description=col.description or None,
                constraints=dg.TableColumnConstraints(nullable=col.nullable, unique=False),
            )
            for name, col in spec.columns.items()
        ]
    )
    metadata: dict[str, Any] = {
        "dagster/table_name": f"main.{spec.name}",
        "grain": ", ".join(spec.grain),
        planning.TABLE_METADATA: ", ".join(spec.partition_columns),
        planning.SCHEME_METADATA: dg.MetadataValue.json(
            {"columns": spec.partition_column, "types": {c: spec.columns[c].type for c in spec.partition_columns
                                                         if c in spec.columns}}
        ),
        "incomplete_inputs": spec.incomplete_inputs,
        "write_strategy": spec.write_strategy,
        "retention": dg.MetadataValue.json({"keep_versions": spec.keep_versions, "keep_days": spec.keep_days}),
    }
    if spec.columns:
        metadata["dagster/column_schema"] = columns
    if spec.metrics:
        metadata["metrics"] = dg.MetadataValue.json(dict(spec.metrics))
    if spec.consumers:
        metadata["consumers"] = dg.MetadataValue.md(_consumers_md(spec.consumers))
    if spec.rules:
        metadata["rules"] = dg.MetadataValue.md(
            "\n".join(f"- **{r.name}**: {r.description or type(r).__name__}" for r in spec.rules)
        )
    return dg.AssetSpec(
        key=spec.key,
        deps=list(deps),
        description=spec.description or None,
        code_version=spec.code_version,
        owners=list(spec.owners),
        kinds={"duckdb"},
        group_name=spec.group,
        tags=dict(spec.tags),
        metadata=metadata,
    )


def _consumers_md(consumers: Sequence[Consumer]) -> str:
    lines = ["| consumer | kind | owners |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {c.kind} | {', '.join(c.owners)} |" for c in consumers]
    return "\n".join(lines)


def _check_results(context, spec: TableSpec, outcomes: Sequence[audit.CheckOutcome]) -> list[dg.AssetCheckResult]:
    selected = context.selected_asset_check_keys
    return [_check_result(spec, o) for o in outcomes if dg.AssetCheckKey(spec.key, o.name) in selected]


def _check_result(spec: TableSpec, o: audit.CheckOutcome) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {"summary": o.summary, **{k: _metadata_value(v) for k, v in o.figures.items()}}
    if o.failures:
        metadata["failing_sample"] = dg.MetadataValue.md(_md_table(o.failures))
    return dg.AssetCheckResult(
        asset_key=spec.key,
        check_name=o.name,
        passed=o.passed,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.WARN if o.warn else dg.AssetCheckSeverity.ERROR,
        description=o.summary,
    )


def _metadata_value(v: Any) -> Any:
    return v if isinstance(v, int | float | str | bool) else str(v)


def _md_table(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _run_metadata(report: RunReport) -> dict[str, Any]:
    versions = [v for v, _, _ in report.partitions.values()]
    outcomes = {
        "publish": "published",
        "candidate": "parallel candidate: publish with backfill-assets cutover",
        "branch": "staged in a branch: publish it with backfill-assets branch publish ID or the job branch_decision",
    }
    return {
        "outcome": outcomes[report.outcome],
        "partitions_published": len(report.partitions) if report.published else 0,
        "rows_in_run": report.rows,
        "transform_seconds": round(report.transform_s, 3),
        "audit_seconds": round(report.audit_s, 3),
        "versions": f"{min(versions)}..{max(versions)}",
    }


def _change_note(spec: TableSpec, report: RunReport, context: dg.AssetExecutionContext) -> str:
    """This publish's change note: the same format `backfill-assets notes` uses for a whole backfill."""
    keys = sorted(report.partitions)
    brief = context.run.tags.get(BRIEF_TAG)
    note = changes.Note(
        title=f"{spec.name} {keys[0]}..{keys[-1]}" + (f", brief {brief}" if brief else ""),
        assets={spec.name: {"published": keys, "held": [], "checks": "all passed"}},
        changes=changes.metric_changes(spec.name, report.metrics_before, report.metrics_after),
        consumers=[c.name for c in spec.consumers],
    )
    return note.to_markdown()


def _partition_metadata(report: RunReport, key: str) -> dict[str, Any]:
    """Per partition: rows, content hash, version, and each metric after (and before) this publish."""
    version, rows, content_hash = report.partitions[key]
    md: dict[str, Any] = {"dagster/row_count": rows, "content_hash": content_hash, "version": version}
    if key in report.provisional:
        md[PROVISIONAL_METADATA] = ", ".join(report.provisional[key])
    before = report.metrics_before.get(key, {})
    for metric, value in report.metrics_after.get(key, {}).items():
        md[metric] = _number(value)
        if before.get(metric) is not None:
            md[f"{metric} (before)"] = _number(before[metric])
    return md


def _number(value: Any) -> float | int | None:
    return value if value is None or isinstance(value, int) else float(value)


def consumer_specs(specs: Sequence[TableSpec]) -> list[dg.AssetSpec]:
    """External assets for the dashboards and exports the tables feed, so lineage shows them."""
    readers: dict[dg.AssetKey, tuple[Consumer, list[dg.AssetKey]]] = {}
    for spec in specs:
        for c in spec.consumers:
            readers.setdefault(c.key, (c, []))[1].append(spec.key)
    return [
        dg.AssetSpec(
            key=key,
            deps=tables,
            kinds={c.kind},
            owners=list(c.owners),
            group_name="consumers",
            description=f"{c.kind.capitalize()} '{c.name}', reads {', '.join(t.to_user_string() for t in tables)}.",
            metadata={"consumer": c.name, **({"url": dg.MetadataValue.url(c.url)} if c.url else {})},
        )
        for key, (c, tables) in readers.items()
    ]


def report_pointer_changes(
    instance: dg.DagsterInstance, con, changes: Mapping[str, Mapping[str, int]], action: str, reason: str | None
) -> int:
    """Tell Dagster what consumers read after a pointer change made outside a run (rollback, approve, cutover,
    branch publish): one runless materialization per partition naming the version published and its content
    hash (also its data version), so the asset's page describes the published data. Returns the events sent."""
    sent = 0
    for asset, versions in changes.items():
        published = catalog.published_partitions(con, asset)
        sent += _report_published(instance, asset, {k: published[k] for k in versions}, action, reason)
    return sent


def _report_published(
    instance: dg.DagsterInstance,
    asset: str,
    published: Mapping[str, tuple[int, int, str]],
    action: str,
    reason: str | None = None,
) -> int:
    """One runless materialization per partition of `published` (partition -> version, rows, content hash)."""
    for key, (version, rows, content_hash) in published.items():
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=dg.AssetKey.from_user_string(asset),
                partition=key if key != catalog.OUTSIDE_WINDOW else None,
                description=f"{action}: consumers read version {version}" + (f" ({reason})" if reason else ""),
                metadata={"version": version, "content_hash": content_hash, "dagster/row_count": rows,
                          "pointer_change": action},
                tags={DATA_VERSION_TAG: content_hash},
            )
        )  # fmt: skip
    return len(published)


class BranchDecision(dg.Config):
    """What the job ``branch_decision`` does to a branch (the launchpad's config in the Dagster UI)."""

    branch: str
    action: Literal["approve", "publish", "discard", "undo"]
    by: str
    reason: str = ""


def branch_job(name: str = "branch_decision") -> dg.JobDefinition:
    """A job that approves, publishes, discards or undoes a branch from the Dagster UI (*Jobs → branch_decision
    → Launchpad*): the same decisions, refusals and ledger entries as ``backfill-assets branch``, then Dagster is
    told what consumers read (see :func:`report_pointer_changes`)."""

    @dg.op(name=f"{name}_op", required_resource_keys={WAREHOUSE_KEY}, pool=POOL)
    def decide(context: dg.OpExecutionContext, config: BranchDecision) -> None:
        reason = config.reason or None
        with getattr(context.resources, WAREHOUSE_KEY).get_connection() as con:
            try:
                changed = history.decide_branch(con, config.action, config.branch, config.by, reason)
            except (warehouse.WarehouseError, history.HistoryError) as e:
                raise dg.Failure(description=str(e), allow_retries=False) from None
            what = f"branch {config.branch} {config.action}"
            sent = report_pointer_changes(context.instance, con, changed, what, reason)
        context.log.info(f"branch {config.branch}: {config.action} by {config.by} ({sent} partitions reported)")

    @dg.job(name=name, description="Approve, publish, discard or undo a backfill's branch (config: branch, action, by)")
    def job():
        decide()

    return job
