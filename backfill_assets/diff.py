"""Keyed comparison of two relations, in the spirit of SQLMesh's table_diff and data-diff.

Everything is counted by SQL inside DuckDB; only a bounded sample of differing rows is fetched.

Semantics, for keys ``K`` present on both sides:

- Key equality is NULL-safe: a NULL key equals a NULL key.
- A key value is *matched* when it occurs exactly once in base and exactly once in target, *ambiguous*
  when present on both sides but duplicated on at least one, *base only* / *target only* otherwise.
- Compared columns are those on both sides except the keys, in base's column order. Values are equal
  when ``IS NOT DISTINCT FROM`` (NULL equals NULL, NULL differs from any value, floats compared
  exactly). A column (or key) whose type differs between the sides is compared as ``CAST(x AS VARCHAR)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from .spec import quote_ident


@dataclass
class DiffResult:
    """What differs between `base` and `target`: schema, keys, and values of the matched rows."""

    keys: list[str]
    added_columns: list[tuple[str, str]]  # (name, type) in target, not in base
    removed_columns: list[tuple[str, str]]  # (name, type) in base, not in target
    type_changes: list[tuple[str, str, str]]  # (name, base type, target type)
    base_rows: int
    target_rows: int
    base_duplicate_keys: int  # distinct key values occurring more than once in base
    target_duplicate_keys: int
    matched: int  # distinct key values occurring exactly once in base and exactly once in target
    ambiguous: int  # distinct key values present on both sides, duplicated on at least one
    base_only: int  # distinct key values present in base, absent from target
    target_only: int
    full_matches: int  # matched rows whose compared columns are all equal
    partial_matches: int  # matched - full_matches
    column_match_rates: dict[str, float | None] = field(default_factory=dict)  # equal / matched per column
    samples: list[dict[str, Any]] = field(default_factory=list)  # {keys..., "column", "base", "target"}


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    """(column, type) of a relation, in its column order, without running it."""
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM {quote_ident(relation)}").fetchall()]


def _expr(column: str, as_varchar: bool) -> str:
    """The quoted column, cast to VARCHAR when its type differs between the sides."""
    col = quote_ident(column)
    return f"CAST({col} AS VARCHAR)" if as_varchar else col


def _unique_side(relation: str, keys: Sequence[str], compared: Sequence[str], changed: set[str], with_raw: bool) -> str:
    """Rows of `relation` whose key value occurs exactly once, with positional aliases.

    ``_k{i}``: the keys, ``_c{i}``: the compared columns (as compared), ``_r{i}``: the same columns
    as stored (only `with_raw`, for samples).
    """
    key_exprs = [_expr(k, k in changed) for k in keys]
    cols = [f"{e} AS _k{i}" for i, e in enumerate(key_exprs)]
    cols += [f"{_expr(c, c in changed)} AS _c{i}" for i, c in enumerate(compared)]
    if with_raw:
        cols += [f"{quote_ident(c)} AS _r{i}" for i, c in enumerate(compared)]
    # The inner SELECT exposes only the positional aliases, so none can be shadowed by a column of the relation.
    partition = ", ".join(f"_k{i}" for i in range(len(keys)))
    return (
        f"(SELECT * FROM (SELECT {', '.join(cols)} FROM {quote_ident(relation)}) "
        f"QUALIFY count(*) OVER (PARTITION BY {partition}) = 1)"
    )


def _matched_join(
    base: str, target: str, keys: Sequence[str], compared: Sequence[str], changed: set[str], with_raw: bool = False
) -> str:
    """FROM clause pairing the matched rows of both sides as ``_b`` and ``_t``."""
    on = " AND ".join(f"_b._k{i} IS NOT DISTINCT FROM _t._k{i}" for i in range(len(keys)))
    return (
        f"{_unique_side(base, keys, compared, changed, with_raw)} AS _b "
        f"JOIN {_unique_side(target, keys, compared, changed, with_raw)} AS _t ON {on}"
    )


def _equal(i: int) -> str:
    return f"(_b._c{i} IS NOT DISTINCT FROM _t._c{i})"


def _all_equal(compared: Sequence[str]) -> str:
    return " AND ".join(_equal(i) for i in range(len(compared))) or "TRUE"


def _key_counts(
    con: duckdb.DuckDBPyConnection, base: str, target: str, keys: Sequence[str], changed: set[str]
) -> tuple[int, ...]:
    """(base rows, target rows, base dup keys, target dup keys, matched, ambiguous, base only, target only).

    One GROUP BY over both sides stacked: grouping treats NULL keys as equal.
    """
    key_exprs = ", ".join(f"{_expr(k, k in changed)} AS _k{i}" for i, k in enumerate(keys))
    group = ", ".join(f"_k{i}" for i in range(len(keys)))
    sql = f"""
        SELECT
            coalesce(sum(_nb), 0), coalesce(sum(_nt), 0),
            count(*) FILTER (WHERE _nb > 1), count(*) FILTER (WHERE _nt > 1),
            count(*) FILTER (WHERE _nb = 1 AND _nt = 1),
            count(*) FILTER (WHERE _nb > 0 AND _nt > 0 AND (_nb > 1 OR _nt > 1)),
            count(*) FILTER (WHERE _nb > 0 AND _nt = 0), count(*) FILTER (WHERE _nb = 0 AND _nt > 0)
        FROM (
            SELECT sum(_side_b) AS _nb, sum(_side_t) AS _nt FROM (
                SELECT {key_exprs}, 1 AS _side_b, 0 AS _side_t FROM {quote_ident(base)}
                UNION ALL
                SELECT {key_exprs}, 0 AS _side_b, 1 AS _side_t FROM {quote_ident(target)}
            ) GROUP BY {group}
        )
    """
    return tuple(int(v) for v in con.execute(sql).fetchall()[0])


def _value_counts(
    con: duckdb.DuckDBPyConnection,
    base: str,
    target: str,
    keys: Sequence[str],
    compared: Sequence[str],
    changed: set[str],
) -> tuple[int, int, list[int]]:
    """(matched rows, fully equal rows, equal rows per compared column) over the matched keys."""
    per_column = "".join(f", count(*) FILTER (WHERE {_equal(i)})" for i in range(len(compared)))
    sql = (
        f"SELECT count(*), count(*) FILTER (WHERE {_all_equal(compared)}){per_column} "
        f"FROM {_matched_join(base, target, keys, compared, changed)}"
    )
    row = [int(v) for v in con.execute(sql).fetchall()[0]]
    return row[0], row[1], row[2:]


def _samples(
    con: duckdb.DuckDBPyConnection,
    base: str,
    target: str,
    keys: Sequence[str],
    compared: Sequence[str],
    changed: set[str],
    sample_size: int,
) -> list[dict[str, Any]]:
    """Up to `sample_size` (row, differing column) entries, ordered by key then column order.

    At most `sample_size` rows are fetched, since each differing row gives at least one entry.
    """
    if sample_size <= 0 or not compared:
        return []
    n_keys, n_cols = len(keys), len(compared)
    select = [f"_b._k{i}" for i in range(n_keys)]
    select += [f"{_equal(i)}" for i in range(n_cols)]
    select += [f"_b._r{i}" for i in range(n_cols)] + [f"_t._r{i}" for i in range(n_cols)]
    order = ", ".join(f"_b._k{i} ASC NULLS LAST" for i in range(n_keys))
    sql = (
        f"SELECT {', '.join(select)} FROM {_matched_join(base, target, keys, compared, changed, with_raw=True)} "
        f"WHERE NOT ({_all_equal(compared)}) ORDER BY {order} LIMIT ?"
    )
    out: list[dict[str, Any]] = []
    for row in con.execute(sql, [sample_size]).fetchall():
        key_values = dict(zip(keys, row[:n_keys], strict=True))
        equal = row[n_keys : n_keys + n_cols]
        base_values = row[n_keys + n_cols : n_keys + 2 * n_cols]
        target_values = row[n_keys + 2 * n_cols :]
        for i, column in enumerate(compared):
            if not equal[i]:
                out.append({**key_values, "column": column, "base": base_values[i], "target": target_values[i]})
    return out[:sample_size]


def diff_relations(
    con: duckdb.DuckDBPyConnection, base: str, target: str, keys: Sequence[str], sample_size: int = 5
) -> DiffResult:
    """Compare the relations `base` and `target` (tables or views in `con`) row by row on `keys`.

    Raises :class:`~backfill_assets.spec.SpecError` for an invalid identifier and ``ValueError``
    when no keys are given or a key is missing on either side.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("diff_relations: give at least one key column")
    if len(set(keys)) != len(keys):
        raise ValueError(f"diff_relations: duplicate key columns in {keys}")
    if sample_size < 0:
        raise ValueError("diff_relations: sample_size must be >= 0")
    for k in keys:
        quote_ident(k)
    base_cols, target_cols = _columns(con, base), _columns(con, target)
    base_types, target_types = dict(base_cols), dict(target_cols)
    for k in keys:
        for side, types in ((base, base_types), (target, target_types)):
            if k not in types:
                raise ValueError(f"diff_relations: key column {k!r} is missing from {side!r}")
    compared = [c for c, _ in base_cols if c in target_types and c not in keys]
    changed = {c for c, t in base_cols if c in target_types and t != target_types[c]}
    (
        base_rows,
        target_rows,
        base_dups,
        target_dups,
        matched,
        ambiguous,
        base_only,
        target_only,
    ) = _key_counts(con, base, target, keys, changed)
    joined, full, equal = _value_counts(con, base, target, keys, compared, changed)
    if joined != matched:  # both count the same thing; a mismatch would mean a bug here, not in the data
        raise RuntimeError(f"diff_relations: matched keys {matched} but {joined} matched rows")
    return DiffResult(
        keys=keys,
        added_columns=[(c, t) for c, t in target_cols if c not in base_types],
        removed_columns=[(c, t) for c, t in base_cols if c not in target_types],
        type_changes=[(c, t, target_types[c]) for c, t in base_cols if c in changed],
        base_rows=base_rows,
        target_rows=target_rows,
        base_duplicate_keys=base_dups,
        target_duplicate_keys=target_dups,
        matched=matched,
        ambiguous=ambiguous,
        base_only=base_only,
        target_only=target_only,
        full_matches=full,
        partial_matches=matched - full,
        column_match_rates={c: (n / matched if matched else None) for c, n in zip(compared, equal, strict=True)},
        samples=_samples(con, base, target, keys, compared, changed, sample_size),
    )


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _show(value: Any) -> str:
    """A value as people read it: NULL, quoted text, plain numbers and dates."""
    if value is None:
        return "NULL"
    return repr(value) if isinstance(value, str) else str(value)


def render_diff(result: DiffResult) -> str:
    """A short human-readable report of a :class:`DiffResult`."""
    r = result
    lines = [f"Diff on keys ({', '.join(r.keys)})", "", "Schema:"]
    schema = [f"  + {c} {t}" for c, t in r.added_columns]
    schema += [f"  - {c} {t}" for c, t in r.removed_columns]
    schema += [f"  ~ {c} {b} -> {t} (compared as VARCHAR)" for c, b, t in r.type_changes]
    lines += schema or ["  no changes"]
    lines += [
        "",
        "Rows:",
        f"  base: {r.base_rows}, target: {r.target_rows}",
        f"  keys in both (matched one to one): {r.matched}",
        f"  keys only in base: {r.base_only}",
        f"  keys only in target: {r.target_only}",
        f"  keys in both but duplicated (ambiguous, not compared): {r.ambiguous}",
        f"  duplicated keys: base {r.base_duplicate_keys}, target {r.target_duplicate_keys}",
        "",
        "Matched rows:",
        f"  full matches: {r.full_matches} ({_pct(r.full_matches, r.matched)})",
        f"  partial matches: {r.partial_matches} ({_pct(r.partial_matches, r.matched)})",
    ]
    if r.column_match_rates:
        lines += ["", "Column match rates:"]
        width = max(len(c) for c in r.column_match_rates)
        for column, rate in r.column_match_rates.items():
            lines.append(f"  {column:<{width}}  {'-' if rate is None else f'{rate:.1%}'}")
    if r.samples:
        lines += ["", "Samples:"]
        for s in r.samples:
            key = ", ".join(f"{k}={_show(s.get(k))}" for k in r.keys)
            lines.append(f"  ({key}) {s['column']}: {_show(s['base'])} -> {_show(s['target'])}")
    return "\n".join(lines)
