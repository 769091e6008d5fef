"""The checks that gate publishing. Each runs as SQL inside DuckDB over the temp views
``candidate`` (the rows under audit) and ``previous`` (what is published now for the same
partitions), with ``_bfa_run`` listing the partitions, and returns a :class:`CheckOutcome`.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandera.pandas as pa

from . import catalog
from .partitions import hashable
from .spec import Invariant, Pattern, Reconcile, TableSpec, quote_ident
from .warehouse import describe, sql_params

SAMPLE_ROWS = 5
SCHEMA_SAMPLE_ROWS = 10_000

UNIQUE, COMPLETE, RECONCILED, SCHEMA = "unique_grain", "complete", "reconciled", "schema"
PRIVATE, INPUTS = "no_personal_data", "inputs_complete"

CHECK_DESCRIPTIONS = {
    INPUTS: "Every upstream partition the partition mappings read is published, checked before the transform "
    "runs (a provisional table may publish without late inputs from after its window; that is a warning).",
    UNIQUE: "No duplicate and no NULL grain keys, also against the table's other published partitions.",
    COMPLETE: "Every partition present and non-empty, no rows outside the window, null rates within "
    "bounds, row counts within the allowed change against the published version.",
    RECONCILED: "Declared metrics match their upstream per partition; declared invariants hold.",
    SCHEMA: "Columns and types as declared; values pass the column checks (on a bounded sample).",
    PRIVATE: "No text value on any row looks like the personal data the table must not hold (e-mails, raw ids).",
}


@dataclass
class CheckOutcome:
    """The result of one check: passed or not, one-line summary, figures, and failing examples."""

    name: str
    passed: bool
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # how long it took (its share of the one profile scan not counted)
    warn: bool = False  # a failure that does not block publishing (Dagster's WARN severity)

    @property
    def blocks(self) -> bool:
        return not self.passed and not self.warn


def check_names(spec: TableSpec) -> list[str]:
    names = [INPUTS, UNIQUE, COMPLETE]
    if spec.rules:
        names.append(RECONCILED)
    if spec.columns:
        names.append(SCHEMA)
    if spec.personal_data:
        names.append(PRIVATE)
    return names


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def check_unique(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, null_keys: int, published: str | None = None
) -> CheckOutcome:
    """`null_keys`: rows of ``candidate`` with a NULL grain column (counted by :func:`profile_aggregates`).
    `published`: the consumers' view to check the candidate's keys against, outside the run's partitions
    (``_bfa_run``), so a key is unique in the whole table; not needed when the grain holds the partition
    column. The published side is probed, never hashed: its keys are read once, the candidate's are the
    hash table."""
    keys = ", ".join(quote_ident(c) for c in spec.grain)
    dup_keys, extra_rows = con.execute(
        f"SELECT count(*), coalesce(sum(n - 1), 0) FROM "
        f"(SELECT count(*) AS n FROM candidate GROUP BY {keys} HAVING count(*) > 1)"
    ).fetchall()[0]
    elsewhere: list[dict] = []
    clashes = 0
    if published and not set(spec.partition_columns) <= set(spec.grain):
        part = spec.scheme.expr("p.")
        same = " AND ".join(f"p.{quote_ident(c)} = c.{quote_ident(c)}" for c in spec.grain)
        clash_sql = (
            f"SELECT {', '.join(f'p.{quote_ident(c)}' for c in spec.grain)}, {part} AS published_in "
            f"FROM {published} p WHERE {part} NOT IN (SELECT partition_value FROM _bfa_run) "
            f"AND EXISTS (SELECT 1 FROM candidate c WHERE {same})"
        )
        clashes = con.execute(f"SELECT count(*) FROM ({clash_sql})").fetchall()[0][0]
        if clashes:
            elsewhere = _rows(con, f"SELECT * FROM ({clash_sql}) ORDER BY ALL LIMIT {SAMPLE_ROWS}")
    figures = {
        "duplicate_keys": dup_keys,
        "duplicate_rows": int(extra_rows),
        "null_key_rows": null_keys,
        "keys_published_in_other_partitions": clashes,
    }
    failures: list[dict] = list(elsewhere)
    if dup_keys:
        failures += _rows(
            con,
            f"SELECT {keys}, count(*) AS copies FROM candidate GROUP BY {keys} "
            f"HAVING count(*) > 1 ORDER BY copies DESC, {keys} LIMIT {SAMPLE_ROWS}",
        )
    if null_keys:  # grain and partition columns only: samples land in Dagster's event log
        shown = ", ".join(quote_ident(c) for c in dict.fromkeys([*spec.grain, *spec.partition_columns]))
        failures += _rows(con, f"SELECT {shown} FROM candidate WHERE {_any_null(spec.grain)} LIMIT {SAMPLE_ROWS}")
    grain = "(" + ", ".join(spec.grain) + ")"
    problems = []
    if dup_keys or null_keys:
        problems.append(
            f"{plural(dup_keys, 'grain key')} {grain} appear more than once "
            f"({plural(int(extra_rows), 'extra row')}); {plural(null_keys, 'row')} with a NULL key"
        )
    if clashes:
        first = elsewhere[0]
        example = ", ".join(f"{c}={first[c]}" for c in spec.grain)
        problems.append(
            f"{plural(clashes, 'grain key')} {grain} already published in other partitions "
            f"(e.g. {example} in {first['published_in']})"
        )
    summary = "; ".join(problems) or f"every grain key {grain} is unique in the table and not NULL"
    return CheckOutcome(UNIQUE, not problems, summary, figures, failures)


def check_inputs(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, needs: Mapping[str, Sequence[Any]], branch: str | None = None
) -> tuple[CheckOutcome, dict[str, list[str]]]:
    """The gate before a run's transform: `needs` maps each partition of the run to the upstream partitions it
    reads (:class:`planning.Need`: asset, key, late); in a `branch`, the branch's passing versions count as
    published. Returns the outcome and, for a table with ``incomplete_inputs="provisional"``, partition -> the late
    inputs it publishes without ("asset key")."""
    published = catalog.published_keys(con, branch)
    missing = {k: [n for n in ns if n.key not in published(n.asset)] for k, ns in needs.items()}
    missing = {k: ns for k, ns in missing.items() if ns}
    allow_late = spec.incomplete_inputs == "provisional"
    refused = {k: ns for k, ns in missing.items() if not allow_late or any(not n.late for n in ns)}
    provisional = {k: [n.label for n in ns] for k, ns in missing.items() if k not in refused}
    read = sum(len(ns) for ns in needs.values())
    figures = {
        "upstream_partitions_read": read,
        "partitions_refused": len(refused),
        "partitions_provisional": len(provisional),
    }
    which = refused or missing
    failures = [
        {"partition": k, "missing": ", ".join(n.label for n in ns)}
        for k, ns in sorted(which.items())[:SAMPLE_ROWS]
    ]
    if not missing:
        summary = f"all {plural(read, 'upstream partition')} read are published" if read else "no upstream tables"
        return CheckOutcome(INPUTS, True, summary, figures), {}
    absent = sorted({(n.asset, n.key) for ns in which.values() for n in ns})
    by_asset: dict[str, list[str]] = {}
    for asset, key in absent:
        by_asset.setdefault(asset, []).append(key)
    named = "; ".join(f"{a} {_preview(ks)}" for a, ks in by_asset.items())
    if refused:
        summary = (
            f"{plural(len(refused), 'partition')} ({_preview(sorted(refused))}) read unpublished upstream "
            f"partitions: {named}"
        )
        return CheckOutcome(INPUTS, False, summary, figures, failures), {}
    summary = (
        f"provisional: {plural(len(provisional), 'partition')} ({_preview(sorted(provisional))}) published before "
        f"late inputs: {named}"
    )
    return CheckOutcome(INPUTS, False, summary, figures, failures, warn=True), provisional


def provisional_published(provisional: Mapping[tuple[str, str], Sequence[str]]) -> CheckOutcome:
    """The inputs gate over what is published: a warning naming the partitions published as provisional."""
    keys = sorted(k for _, k in provisional)
    figures = {"partitions_provisional": len(keys)}
    if not keys:
        return CheckOutcome(INPUTS, True, "no published partition is provisional", figures)
    summary = f"provisional: {plural(len(keys), 'partition')} ({_preview(keys)}) published before late inputs"
    failures = [{"partition": k, "missing": ", ".join(m)} for (_, k), m in sorted(provisional.items())[:SAMPLE_ROWS]]
    return CheckOutcome(INPUTS, False, summary, figures, failures, warn=True)


def check_complete(
    spec: TableSpec,
    rows: Mapping[str, int],
    previous_rows: Mapping[str, int],
    profile: Mapping[str, Mapping[tuple, Any]],
    stray_rows: int = 0,
) -> CheckOutcome:
    """`rows`: partition -> rows of the candidate; `previous_rows`: partition -> rows published now;
    `profile`: partition -> the values of :func:`profile_aggregates` (partitions with rows)."""
    failures: list[dict[str, Any]] = []
    empty = [] if spec.sparse else [k for k, n in rows.items() if n == 0]
    failures += [{"partition": k, "problem": "no rows"} for k in empty[:SAMPLE_ROWS]]
    moved = []
    for k, n in rows.items():
        old = previous_rows.get(k)
        if old and abs(n - old) > spec.max_row_change * old:
            moved.append(
                {
                    "partition": k,
                    "problem": "row count moved",
                    "rows": n,
                    "published_rows": old,
                    "change": f"{(n - old) / old:+.1%}",
                }
            )
    failures += moved[:SAMPLE_ROWS]
    if stray_rows:
        failures.append(
            {"partition": "<outside window>", "problem": "rows outside the run's partitions", "rows": stray_rows}
        )
    null_failures = _null_rates(spec, rows, profile)
    failures += null_failures
    figures = {
        "partitions": len(rows),
        "rows": sum(rows.values()),
        "empty_partitions": len(empty),
        "partitions_moved_beyond_tolerance": len(moved),
        "rows_outside_window": stray_rows,
        "columns_over_null_bound": len(null_failures),
        "max_row_change": spec.max_row_change,
    }
    passed = not failures
    if passed:
        summary = f"{len(rows)} partitions present, {sum(rows.values())} rows, within bounds"
    else:
        parts = []
        if empty:
            parts.append(f"{plural(len(empty), 'empty partition')} ({_preview(empty)})")
        if moved:
            m = moved[0]
            parts.append(
                f"{plural(len(moved), 'partition')} changed row count by more than {spec.max_row_change:.0%} "
                f"(e.g. {m['partition']}: {m['rows']} rows vs {m['published_rows']} published, {m['change']})"
            )
        if stray_rows:
            parts.append(f"{plural(stray_rows, 'row')} outside the run's partitions")
        parts += [f"column {f['column']}: {f['problem']}" for f in null_failures]
        summary = "; ".join(parts)
    return CheckOutcome(COMPLETE, passed, summary, figures, failures)


def _null_bounds(spec: TableSpec) -> dict[str, float]:
    return {
        name: (0.0 if not col.nullable else col.max_null_rate)
        for name, col in spec.columns.items()
        if not col.nullable or col.max_null_rate is not None
    }


def profile_aggregates(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> tuple[dict[tuple, str], dict[str, Any]]:
    """What the checks need per partition, as SQL aggregates (and their bound values) the publish step computes
    in the same scan that hashes each version: ("metric", name) -> the spec's metric; ("null_keys",) -> rows
    with a NULL grain column; ("nulls", column) -> NULL count of a column with a null bound (a bounded column
    missing from ``candidate`` is the schema check's finding); ("private", label, column) -> values of a text
    column that look like that personal data."""
    present = dict(describe(con, "SELECT * FROM candidate"))
    out: dict[tuple, str] = {("metric", n): expr for n, expr in spec.metrics.items()}
    out[("null_keys",)] = f"count(*) FILTER (WHERE {_any_null(spec.grain)})"
    out.update(
        {("nulls", c): f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL)" for c in _null_bounds(spec) if c in present}
    )
    text = [c for c, t in present.items() if t == "VARCHAR"]
    params: dict[str, Any] = {}
    for i, (label, pattern) in enumerate(spec.personal_data.items() if text else ()):
        pattern = pattern if isinstance(pattern, Pattern) else Pattern(pattern)
        params[f"_bfa_re{i}"] = pattern.regex
        if pattern.needs:
            params[f"_bfa_needs{i}"] = pattern.needs
        for c in text:
            looks = f"regexp_matches({quote_ident(c)}, $_bfa_re{i})"
            if pattern.needs:  # CASE, not AND: only CASE skips the regex for the values without `needs`
                looks = f"CASE WHEN contains({quote_ident(c)}, $_bfa_needs{i}) THEN {looks} ELSE false END"
            out[("private", label, c)] = f"count(*) FILTER (WHERE {looks})"
    return out, params


def _any_null(columns: Sequence[str]) -> str:
    return " OR ".join(f"{quote_ident(c)} IS NULL" for c in columns)


def profiled_metrics(values: Mapping[tuple, Any]) -> dict[str, Any]:
    """The metric values out of one partition's :func:`profile_aggregates` values."""
    return {key[1]: v for key, v in values.items() if key[0] == "metric"}


def check_private(spec: TableSpec, profile: Mapping[str, Mapping[tuple, Any]]) -> CheckOutcome:
    """Text columns holding values that look like personal data (from :func:`profile_aggregates`). Findings
    name columns and counts, never the values: check results land in Dagster's event log."""
    hits: dict[tuple[str, str], list[tuple[str, int]]] = {}  # (column, label) -> [(partition, values)]
    for key, values in sorted(profile.items()):
        for aggregate, n in values.items():
            if aggregate[0] == "private" and n:
                hits.setdefault((aggregate[2], aggregate[1]), []).append((key, n))
    failures = [
        {"column": c, "looks_like": label, "values": sum(n for _, n in ps), "partitions": len(ps), "first": ps[0][0]}
        for (c, label), ps in sorted(hits.items())
    ]
    figures = {"patterns": len(spec.personal_data), "columns_with_personal_data": len({c for c, _ in hits})}
    if not failures:
        return CheckOutcome(PRIVATE, True, f"no values like {' or '.join(spec.personal_data)}", figures)
    summary = "; ".join(
        f"column {f['column']}: {plural(f['values'], 'value')} like {f['looks_like']} "
        f"in {plural(f['partitions'], 'partition')} (first {f['first']})"
        for f in failures
    )
    return CheckOutcome(PRIVATE, False, summary, figures, failures)


def _null_rates(
    spec: TableSpec, rows: Mapping[str, int], profile: Mapping[str, Mapping[tuple, Any]]
) -> list[dict[str, Any]]:
    """Columns whose NULL rate exceeds its bound in any partition (the worst partition is reported)."""
    counted = {key[1] for values in profile.values() for key in values if key[0] == "nulls"}
    bounded = {c: b for c, b in _null_bounds(spec).items() if c in counted}
    per_partition = sorted((k, rows[k], profile[k]) for k in profile if rows.get(k))
    out = []
    for col, bound in bounded.items():
        over = [(k, n, values[("nulls", col)]) for k, n, values in per_partition if values[("nulls", col)] / n > bound]
        if over:
            p, n, nulls = max(over, key=lambda o: o[2] / o[1])
            problem = (
                f"{nulls} NULLs in {len(over)} partitions (e.g. {p})"
                if bound == 0
                else f"null rate above {bound:.2%} in {len(over)} partitions (worst {p}: {nulls / n:.2%})"
            )
            out.append({"column": col, "problem": problem, "null_rows": sum(o[2] for o in over)})
    return out


def metric_values(con: duckdb.DuckDBPyConnection, spec: TableSpec, relation: str) -> dict[Hashable, dict[str, Any]]:
    """partition value -> {metric: value} over `relation` (``candidate`` or ``previous``)."""
    return metric_values_of(con, spec.metrics, spec.scheme.expr(), relation)


def metric_values_of(
    con: duckdb.DuckDBPyConnection, metrics: Mapping[str, str], partition: str, relation: str
) -> dict[Hashable, dict[str, Any]]:
    """partition value (partitions.hashable of a row's `partition` SQL) -> {metric: value}; metric expressions
    are code from a table spec, not user input."""
    if not metrics:
        return {}
    exprs = ", ".join(f"{expr} AS {quote_ident(name)}" for name, expr in metrics.items())
    rows = _rows(con, f"SELECT {partition} AS _p, {exprs} FROM {quote_ident(relation)} GROUP BY 1")
    return {hashable(r.pop("_p")): r for r in rows}


def check_reconciled(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    params: Mapping[str, Any],
    actual: Mapping[Hashable, Mapping[str, Any]],
    slices: Sequence[Sequence[str]],
) -> CheckOutcome:
    """`actual`: the candidate's metric values per partition value (from :func:`metric_values`); `slices`: the
    run's partition keys in the groups they were written in. A Reconcile rule's expected values are computed
    one slice at a time, with ``$start``/``$end`` (and ``$keys``) bound to the slice, so its memory stays
    bounded like the write's; of each slice's answer only the slice's own partitions count. The Invariants run
    once, over the whole run's scope in `params`."""
    scheme = spec.scheme
    width = len(scheme.columns)  # an expected row: the partition columns, then the value
    values = {k: hashable(scheme.value(k)) for part in slices for k in part}
    figures: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    broken = []
    for rule in spec.rules:
        if isinstance(rule, Reconcile):
            expected = {}
            for part in slices:
                own = {values[k] for k in part}
                window = {**params, **scheme.params(part)}
                rows = con.execute(rule.expected_sql, sql_params(rule.expected_sql, window)).fetchall()
                got = ((scheme.row_value(*r[:width]), r[width]) for r in rows)
                expected.update((d, v) for d, v in got if d in own)
            bad = []
            for key, d in values.items():
                a = _num(actual.get(d, {}).get(rule.metric))
                e = _num(expected.get(d))
                if abs(a - e) > max(rule.abs_tol, rule.rel_tol * abs(e)):
                    bad.append({"rule": rule.name, "partition": key, "actual": a, "expected": e, "difference": a - e})
            figures[f"{rule.name}.partitions_off"] = len(bad)
            if bad:
                worst = max(bad, key=lambda b: abs(b["difference"]))
                actual, expected = _figure(worst["actual"]), _figure(worst["expected"])
                off = f", off by {worst['difference']:.3g}" if actual == expected else ""  # below what prints
                broken.append(
                    f"{rule.name}: {plural(len(bad), 'partition')} off (worst {worst['partition']}: "
                    f"{rule.metric} {actual} vs expected {expected}{off})"
                )
            failures += bad[:SAMPLE_ROWS]
        elif isinstance(rule, Invariant):
            sql = rule.violations_sql
            bound = sql_params(sql, params)
            n = con.execute(f"SELECT count(*) FROM ({sql})", bound).fetchall()[0][0]
            figures[f"{rule.name}.violations"] = n
            if n:
                broken.append(f"{rule.name}: {plural(n, 'violating row')}")
                failures += [
                    {"rule": rule.name, **r} for r in _rows(con, f"SELECT * FROM ({sql}) LIMIT {SAMPLE_ROWS}", bound)
                ]
    summary = "; ".join(broken) if broken else f"{len(spec.rules)} rules hold over {len(values)} partitions"
    return CheckOutcome(RECONCILED, not broken, summary, figures, failures)


def _figure(v: float) -> str:
    """A metric value for people, exact to its cents: 912258.12, not 912258; whole values without a point."""
    return f"{v:.15g}" if v != int(v) else f"{int(v)}"


def _num(v: Any) -> float:
    """A metric value as a float; a partition with no value counts as 0."""
    return 0.0 if v is None else float(v)


def check_schema(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, columns: Mapping[str, str] | None = None
) -> CheckOutcome:
    """`columns`: what the run's transform produced (default: the columns of ``candidate``). The stored table
    may be wider, as a column dropped by a transform reads as NULL in its new versions: a missing column is
    judged on what the transform returned."""
    actual = dict(columns) if columns is not None else dict(describe(con, "SELECT * FROM candidate"))
    failures: list[dict[str, Any]] = []
    for name, col in spec.columns.items():
        if name not in actual:
            failures.append({"column": name, "problem": "missing", "expected": col.type})
        elif canonical_type(actual[name]) != canonical_type(col.type):
            failures.append({"column": name, "problem": "type", "expected": col.type, "actual": actual[name]})
    failures += [
        {"column": c, "problem": "not declared", "actual": t} for c, t in actual.items() if c not in spec.columns
    ]
    sampled = 0
    checked = {n: c for n, c in spec.columns.items() if c.checks and n in actual}
    if checked:
        cols = ", ".join(quote_ident(c) for c in checked)
        df = con.execute(
            f"SELECT {cols} FROM candidate USING SAMPLE reservoir({SCHEMA_SAMPLE_ROWS} ROWS) REPEATABLE (7)"
        ).df()
        sampled = len(df)
        schema = pa.DataFrameSchema({n: pa.Column(checks=list(c.checks), nullable=True) for n, c in checked.items()})
        try:
            schema.validate(df, lazy=True)
        except pa.errors.SchemaErrors as e:
            cases = e.failure_cases.head(SAMPLE_ROWS * 2)
            failures += [
                {"column": r["column"], "problem": f"check {r['check']}", "value": r["failure_case"]}
                for r in cases.to_dict("records")
            ]
    figures = {
        "columns": len(actual),
        "declared_columns": len(spec.columns),
        "problems": len(failures),
        "rows_sampled_for_value_checks": sampled,
    }
    if failures:
        summary = "; ".join(_schema_problem(f) for f in failures[:SAMPLE_ROWS])
    else:
        summary = f"{len(spec.columns)} columns as declared"
    return CheckOutcome(SCHEMA, not failures, summary, figures, failures)


def _schema_problem(f: Mapping[str, Any]) -> str:
    """One schema failure for people: ``revenue: DOUBLE, declared DECIMAL(18,2)``."""
    if f["problem"] == "type":
        return f"{f['column']}: {f['actual']}, declared {f['expected']}"
    if f["problem"] == "missing":
        return f"{f['column']}: missing (declared {f['expected']})"
    if f["problem"] == "not declared":
        return f"{f['column']}: {f['actual']}, not declared"
    return f"{f['column']}: {f['problem']} ({f['value']})"


@functools.cache
def canonical_type(name: str) -> str:
    """DuckDB's own name of a type, so aliases compare equal (TIMESTAMPTZ, TIMESTAMP WITH TIME ZONE)."""
    try:
        return str(duckdb.sqltype(name))
    except (duckdb.Error, RuntimeError, ValueError):
        return name.strip().upper()


def plural(n: int, noun: str) -> str:
    """ "3 rows", "1 row"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _preview(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
