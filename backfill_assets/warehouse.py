"""The row store: versioned rows and the consumers' views, and the transactions that change what consumers read.

Layout, for a derived table ``t`` (the bookkeeping tables are :mod:`backfill_assets.catalog`'s):

- ``bfa.t``: every version's rows side by side, plus ``_bfa_version`` and ``_bfa_published`` (whether
  consumers read the row). The table has the union of every version's columns; each version keeps its own
  list in the catalog.
- ``main.t``: a view of the published rows of ``bfa.t``, with the columns the published versions have.
  Downstream assets, dashboards and people read this. The flags and the view change in the same transaction
  as every pointer change (:func:`decide`, :func:`repoint`, the only two functions that move a pointer), so
  they always equal the catalog's pointer, and a column only a held or candidate run has never shows up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

import duckdb

from . import catalog, sqltext
from .catalog import Candidate, transaction
from .resource import DEFAULT_DB_PATH, Warehouse, WarehouseError, WarehouseLockTimeout, connect
from .spec import quote_ident

__all__ = [
    "DEFAULT_DB_PATH",
    "VERSION_COLUMN",
    "Candidate",
    "Warehouse",
    "WarehouseError",
    "WarehouseLockTimeout",
    "abandon_orphans",
    "allocate",
    "connect",
    "decide",
    "drop_versions",
    "published_partitions",
    "repoint",
    "stage",
]

VERSION_COLUMN, PUBLISHED_COLUMN = catalog.VERSION_COLUMN, catalog.PUBLISHED_COLUMN
published_partitions = catalog.published_partitions


def version_table(asset: str) -> str:
    return f"bfa.{quote_ident(asset)}"


def sql_params(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of `params` that `sql` references as ``$name`` (DuckDB rejects extra ones); a ``$`` in a
    string literal or a comment is none."""
    used = sqltext.parameters(sql)
    missing = used - params.keys()
    if missing:
        raise ValueError(f"SQL uses parameters {sorted(missing)} that were not provided")
    return {k: v for k, v in params.items() if k in used}


def allocate(
    con: duckdb.DuckDBPyConnection, asset: str, partitions: Sequence[tuple[str, Any]], run_id: str, code_version: str
) -> Candidate:
    """Reserve one version per (key, start) partition (see :func:`catalog.allocate`) and describe them in the
    temp table ``_bfa_run``."""
    cand = catalog.allocate(con, asset, [k for k, _ in partitions], run_id, code_version)
    load_run_table(con, [(k, start, cand.versions[k]) for k, start in partitions])
    return cand


def load_run_table(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[str, Any, int]]) -> None:
    """The temp table ``_bfa_run``: (partition_key, partition_value, version) being written or audited;
    ``partition_value`` is what the partition's rows carry (see partitions.Scheme.value)."""
    keys, starts, versions = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _bfa_run AS SELECT unnest(?::VARCHAR[]) AS partition_key, "
        "unnest(?) AS partition_value, unnest(?::BIGINT[]) AS version",
        [keys, starts or None, versions],
    )


def abandon_orphans(con: duckdb.DuckDBPyConnection, asset: str) -> int:
    """Drop the rows of versions still 'staged' by a run that is gone (see :func:`catalog.orphans`); returns how
    many versions. A run still staging in another connection or process keeps its versions."""
    orphans = catalog.orphans(con, asset)
    if not orphans:
        return 0
    with transaction(con):
        if table_exists(con, asset):
            con.execute(f"DELETE FROM {version_table(asset)} WHERE {VERSION_COLUMN} IN (SELECT unnest(?))", [orphans])
        catalog.set_status(con, orphans, "abandoned")
        catalog.ledger(con, asset, "abandon", None, versions=orphans, reason="staged by a run that did not finish")
    return len(orphans)


def table_exists(con: duckdb.DuckDBPyConnection, asset: str) -> bool:
    """Whether the version table ``bfa.<asset>`` exists."""
    return catalog.has(con, asset)


def describe(con: duckdb.DuckDBPyConnection, relation_sql: str) -> list[tuple[str, str]]:
    """(column, type) of a relation, without running it."""
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {relation_sql}").fetchall()]


def stage(
    con: duckdb.DuckDBPyConnection, cand: Candidate, partition: str, source_view: str
) -> list[tuple[str, str]]:
    """Write the rows of `source_view` as the run's candidate versions (committed, not published); returns
    the columns the source produced, which become the versions' own columns.

    Each row gets the version of the partition its `partition` value (SQL over the row's columns, qualified
    by ``s.``; see partitions.Scheme.expr) names; rows outside
    the run's partitions (in ``_bfa_run``) get the stray version so the completeness check can report them.
    A new column is added to the version table, where other versions read it as NULL, but it reaches no
    consumers' view until a version that has it is published.
    Rows are written in version order, so each row group holds few partitions and a date filter reads few
    row groups (measured at 93 days: one month filtered 0.77x a plain table against 1.20x unsorted, for
    5-13% more write time).
    """
    asset = cand.asset
    table = version_table(asset)
    source_cols = describe(con, f"SELECT * FROM {quote_ident(source_view)}")
    for own in (VERSION_COLUMN, PUBLISHED_COLUMN):
        if own in dict(source_cols):
            raise ValueError(f"{asset}: the transform must not return a column named {own}")
    with transaction(con):
        if not table_exists(con, asset):
            cols = ", ".join(f"{quote_ident(c)} {t}" for c, t in source_cols)
            con.execute(
                f"CREATE TABLE {table} ({cols}, {VERSION_COLUMN} BIGINT NOT NULL, "
                f"{PUBLISHED_COLUMN} BOOLEAN NOT NULL DEFAULT false)"
            )
            _create_view(con, asset)
        else:
            existing = dict(describe(con, f"SELECT * FROM {table}"))
            for col, typ in source_cols:
                if col not in existing:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(col)} {typ}")
                elif existing[col] != typ:
                    _retype(con, cand, col, existing[col], typ)
        con.execute(
            f"INSERT INTO {table} BY NAME "
            f"SELECT s.*, coalesce(r.version, ?) AS {VERSION_COLUMN} FROM {quote_ident(source_view)} s "
            f"LEFT JOIN _bfa_run r ON {partition} = r.partition_value "
            f"ORDER BY {VERSION_COLUMN}",
            [cand.stray_version],
        )
    return source_cols


def _retype(con: duckdb.DuckDBPyConnection, cand: Candidate, col: str, old: str, new: str) -> None:
    """A column's type is a version's own: when no kept version has `col` (its only versions were held and
    discarded, or abandoned), the stored column takes the run's type; a kept version's values never change.
    Otherwise a :class:`TypeChange` names the versions that hold the old type."""
    kept = catalog.kept_versions_with(con, cand.asset, col, cand.token)
    if kept:
        shown = ", ".join(map(str, kept[:5])) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        raise TypeChange(
            f"{cand.asset}: column {col!r} is {new} in this run but {old} in versions {shown}, which are kept "
            f"(published, held or kept for rollback); cast it to {old} in the transform, discard the held ones "
            "(backfill-assets discard), or give the new type its own table name"
        )
    q = quote_ident(col)  # only this run's own rows, from an earlier slice, can hold values: cast them exactly
    con.execute(f"ALTER TABLE {version_table(cand.asset)} ALTER {q} SET DATA TYPE {new} USING CAST({q} AS {new})")


class TypeChange(WarehouseError):
    """A run produces a column with another type than kept versions of the table have."""


def read_frame(
    con: duckdb.DuckDBPyConnection, frame: Any, view: str, declared: Mapping[str, str], where: str
) -> None:
    """A transform's DataFrame as the temp view `view`, its declared columns cast to their declared types when it is
    read in (pandas has no exact DECIMAL: a float64 column of cents becomes DECIMAL(18,2) exactly); a value that
    does not convert is a one-line ValueError naming the column."""
    con.register("_bfa_frame_in", frame)
    try:
        casts = []
        for name, typ in declared.items():
            if name in frame.columns:
                canonical = str(duckdb.sqltype(typ))  # a valid type name, never raw text
                casts.append(f"CAST({quote_ident(name)} AS {canonical}) AS {quote_ident(name)}")
        replace = f" REPLACE ({', '.join(casts)})" if casts else ""
        con.execute(f"CREATE OR REPLACE TEMP TABLE _bfa_frame AS SELECT *{replace} FROM _bfa_frame_in")
    except duckdb.ConversionException as e:
        detail = str(e).splitlines()[0].removeprefix("Conversion Error: ")
        raise ValueError(f"{where}: the DataFrame does not convert to the declared column types: {detail}") from None
    finally:
        con.unregister("_bfa_frame_in")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(view)} AS SELECT * FROM _bfa_frame")


# How the views other than the consumers' one (a run's candidate, <table>__candidate, a branch's overlay, diff
# and try) select versions. Measured on DuckDB 2.0 at 100,000 partitions x 50 rows: versions listed as literals
# took 1.5 s to write into a view and read 40-800x slower than a plain table; a semi-join read 2-13x slower; a
# few ranges of version ids 1.0-1.3x. Each range costs comparisons on every row (64 ranges: 6x), so past
# _MAX_RANGES a view semi-joins on its versions within their lowest and highest id.
_MAX_RANGES = 16


def _version_filter(con: duckdb.DuckDBPyConnection, asset: str, members: str) -> str:
    """The condition on the version column that selects the versions of `asset` that `members` (a condition on
    bfa.versions, see catalog.PUBLISHED) selects: ranges of ids (see catalog.version_ranges), else a semi-join.
    Version ids are integers from our own sequence (int() guarantees it), never user input."""
    ranges = catalog.version_ranges(con, asset, members, _MAX_RANGES + 1)
    v = VERSION_COLUMN
    if not ranges:
        return "false"
    if len(ranges) <= _MAX_RANGES:
        return _in_ranges(ranges)
    lo, hi = catalog.member_bounds(con, asset, members)
    return f"({v} BETWEEN {int(lo)} AND {int(hi)} AND {v} IN ({catalog.members_query(asset, members)}))"


def _members(con: duckdb.DuckDBPyConnection, name: str, versions: Sequence[int]) -> str:
    """`versions` as a members condition, over a temp table of this connection named after `name`."""
    table = quote_ident("_bfa_members_" + name)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT unnest(?::BIGINT[]) AS version", [list(versions)])
    return f"version IN (SELECT version FROM temp.main.{table})"


def columns_of(con: duckdb.DuckDBPyConnection, asset: str, members: str) -> list[str]:
    """The columns any version of `asset` that `members` selects has, in the version table's order."""
    have = catalog.member_columns(con, asset, members)
    return [c for c in catalog.physical_columns(con, asset) if c in have]


def _select_list(columns: Sequence[str]) -> str:
    return ", ".join(quote_ident(c) for c in columns) if columns else "NULL AS _bfa_no_columns"


def _publish_rows(
    con: duckdb.DuckDBPyConnection, asset: str, published: Sequence[int], displaced: Sequence[int]
) -> None:
    """Move what consumers read of `asset`: the rows of the `published` versions get the published flag, those of
    the `displaced` ones lose it, and the view is rewritten. Only :func:`decide` and :func:`repoint_in` call it,
    in the transaction that moves the pointer, so the flags always equal the pointer.

    The consumers' view selects the flagged rows: one boolean per row costs a full scan about 0.1x at any
    partition count and any history, and DuckDB skips row groups without a flagged row. A publish updates
    the flags of the rows that change (36.5M rows: 1 s) and nothing else, however many partitions the table
    has. Listing the versions in the view instead cost 1.5 s to write at 100,000 partitions and reads 40-800x
    slower; ranges of version ids cost about 0.2 ms of planning per range on every query (1.5x on a query of
    50,000 rows) and split on every partition republished out of order (see benchmarks/partition_bench.py)."""
    changed = sorted({*published, *displaced})
    if changed:
        where, params = _exact_filter(changed)
        con.execute(
            f"UPDATE {version_table(asset)} SET {PUBLISHED_COLUMN} = {VERSION_COLUMN} IN (SELECT unnest(?::BIGINT[])) "
            f"WHERE {where}",
            [list(published), *params],
        )
    _create_view(con, asset, published)


def _exact_filter(versions: Sequence[int]) -> tuple[str, list]:
    """`versions` (sorted) as a condition on the version column and its parameters: a few runs of consecutive
    ids, which DuckDB pushes into the scan (zone maps skip other versions' row groups), else a semi-join."""
    runs: list[list[int]] = []
    for v in versions:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    if len(runs) > _MAX_RANGES:
        return f"{VERSION_COLUMN} IN (SELECT unnest(?::BIGINT[]))", [list(versions)]
    return _in_ranges(runs), []


def _in_ranges(ranges: Sequence[Sequence[int]]) -> str:
    """The version column within any of `ranges` (lowest, highest id), as literals DuckDB pushes into the scan."""
    return "(" + " OR ".join(f"{VERSION_COLUMN} BETWEEN {int(lo)} AND {int(hi)}" for lo, hi in ranges) + ")"


def _create_view(con: duckdb.DuckDBPyConnection, asset: str, published: Sequence[int] = ()) -> None:
    """(Re)create the consumers' view: the flagged rows (see :func:`_publish_rows`), with the columns the
    published versions have (a table with nothing published shows its first run's columns and no rows).
    `published`: the versions just published. When they have every column the view shows, the view's columns
    are theirs: every other published version's columns are among those shown, so there is no need to read
    them all (at 100,000 partitions that read was a third of a publish)."""
    columns = None
    if published:
        have = {c for cols in catalog.version_columns(con, published).values() for c in cols}
        shown = catalog.relation_columns(con, "main", asset)
        if shown and set(shown) <= have:
            columns = [c for c in catalog.physical_columns(con, asset) if c in have]
    if columns is None:
        any_published = catalog.member_bounds(con, asset, catalog.PUBLISHED)[0] is not None
        columns = columns_of(con, asset, catalog.PUBLISHED) if any_published else catalog.physical_columns(con, asset)
    con.execute(
        f"CREATE OR REPLACE VIEW main.{quote_ident(asset)} AS SELECT {_select_list(columns)} "
        f"FROM {version_table(asset)} WHERE {PUBLISHED_COLUMN}"
    )


def _view(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    name: str,
    members: str,
    columns: Sequence[str] | None = None,
    temp: bool = False,
) -> None:
    """(Re)create the view `name` (in main, or this connection's `temp` one) of the rows of the versions
    `members` selects, with their own columns (or `columns`)."""
    where = _version_filter(con, asset, members)
    if columns is None:
        columns = columns_of(con, asset, members) if where != "false" else catalog.physical_columns(con, asset)
    con.execute(
        f"CREATE OR REPLACE {'TEMP VIEW ' if temp else 'VIEW main.'}{quote_ident(name)} AS "
        f"SELECT {_select_list(columns)} FROM {version_table(asset)} WHERE {where}"
    )


def create_candidate_views(con: duckdb.DuckDBPyConnection, asset: str, partition: str) -> None:
    """Temp views ``candidate`` (this run's in-window rows) and ``previous`` (what is published now for the
    same partitions), both without the version column. ``candidate`` has every column of the table (NULL where
    the run produced none), so a rule naming a column the run dropped still binds and the schema check, which
    judges what the run produced, reports it. `partition`: a row's partition value in SQL (Scheme.expr())."""
    members = "version IN (SELECT version FROM temp.main._bfa_run)"
    _view(con, asset, "candidate", members, catalog.physical_columns(con, asset), temp=True)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW previous AS SELECT * FROM main.{quote_ident(asset)} "
        f"WHERE {partition} IN (SELECT partition_value FROM _bfa_run)"
    )


def create_published_views(con: duckdb.DuckDBPyConnection, asset: str) -> None:
    """For auditing what is published (``_bfa_run`` loaded with the published partitions):
    ``candidate`` is the published table and ``previous`` is empty."""
    view = f"main.{quote_ident(asset)}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW candidate AS SELECT * FROM {view}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW previous AS SELECT * FROM {view} WHERE false")


def version_view(
    con: duckdb.DuckDBPyConnection, asset: str, name: str, versions: Sequence[int], columns: Sequence[str] | None = None
) -> None:
    """A temp view `name` of the rows of `versions` of `asset`, with their own columns (or `columns`)."""
    _view(con, asset, name, _members(con, name, versions), columns, temp=True)


def version_stats(con: duckdb.DuckDBPyConnection, asset: str, versions: Sequence[int]) -> dict[int, tuple[int, str]]:
    """Rows and an order-independent content hash of each version over its own columns."""
    return profile_versions(con, asset, versions, {})[0]


def profile_versions(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    versions: Sequence[int],
    aggregates: Mapping[Hashable, str],
    params: Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
) -> tuple[dict[int, tuple[int, str]], dict[int, dict[Hashable, Any]]]:
    """:func:`version_stats` plus `aggregates` (name -> SQL aggregate over the table's columns, code from a
    table spec, with ``$name`` values bound from `params`) of each version, all in one scan per set of
    columns: the audit's figures cost no extra pass over the rows. `columns`: the versions' columns when the
    catalog does not know them yet (a run being audited)."""
    if not versions:
        return {}, {}
    if columns is None:
        groups: dict[tuple[str, ...], list[int]] = {}
        for v, cols in catalog.version_columns(con, versions).items():
            groups.setdefault(cols, []).append(v)
    else:
        groups = {tuple(columns): list(versions)}
    names = list(aggregates)
    extra = "".join(f", {aggregates[n]}" for n in names)
    stats = {v: (0, _content_hash(0, 0, ())) for v in versions}
    profile: dict[int, dict[Hashable, Any]] = {}
    for cols, members in groups.items():
        own = sorted(cols)  # the hash ignores column order and every column the version does not have
        hashed = f"hash({', '.join(quote_ident(c) for c in own)})" if own else "0"
        rows = con.execute(
            f"SELECT {VERSION_COLUMN}, count(*), sum({hashed})::HUGEINT{extra} "
            f"FROM {version_table(asset)} WHERE {_version_filter(con, asset, _members(con, 'profile', members))} "
            "GROUP BY 1",
            dict(params or {}),
        ).fetchall()
        stats.update({r[0]: (r[1], _content_hash(r[1], r[2], own)) for r in rows})
        profile.update({r[0]: dict(zip(names, r[3:], strict=True)) for r in rows})
    return stats, profile


def _content_hash(rows: int, hash_sum: int, columns: Sequence[str]) -> str:
    names = int.from_bytes(hashlib.blake2b("\0".join(columns).encode(), digest_size=8).digest(), "big")
    return f"{rows}:{(hash_sum + names) % 2**64:016x}"


def decide(
    con: duckdb.DuckDBPyConnection,
    cand: Candidate,
    stats: dict[int, tuple[int, str]],
    *,
    outcome: str,
    columns: Sequence[str],
    version_metrics: Mapping[str, Mapping[str, Any]] | None = None,
    provisional: Mapping[str, Sequence[str]] | None = None,
    branch: str | None = None,
    inputs: Mapping[str, Sequence[Any]] | None = None,
    **ledger: Any,
) -> None:
    """Record a run's outcome in one transaction: "publish" (every partition points at its new version),
    "candidate" (kept beside the published data, readable as <table>__candidate), "branch" (kept in `branch`
    until the branch publishes) or "hold". `columns`: the columns the run produced; `version_metrics`: partition
    key -> the spec's metric values over its new version, kept with the version; `provisional`: partition key ->
    the late inputs it was made without. In a branch, a run's versions replace the branch's earlier ones of the
    same partitions (their rows are deleted), held or not, and keep the upstream versions they read (`inputs`:
    partition -> :class:`planning.Need`)."""
    at = catalog.now()
    new = list(cand.versions.values())
    with transaction(con, checkpoint=outcome == "publish"):
        if branch is not None:
            heads = catalog.branch_heads(con, branch).get(cand.asset, {})
            replaced = [heads[k][0] for k in cand.versions if k in heads]
            if replaced:
                con.execute(
                    f"DELETE FROM {version_table(cand.asset)} WHERE {VERSION_COLUMN} IN (SELECT unnest(?))", [replaced]
                )
                catalog.set_status(con, replaced, "discarded", at)
            staged = {**cand.versions, catalog.OUTSIDE_WINDOW: cand.stray_version}  # strays too: discard removes them
            catalog.stage_in_branch(con, cand.asset, staged, branch)
            catalog.record_reads(con, branch, cand.versions, inputs or {})
        catalog.record_stats(con, stats, {cand.versions[k]: m for k, m in (version_metrics or {}).items()}, columns)
        catalog.mark_provisional(con, {cand.versions[k]: m for k, m in (provisional or {}).items()})
        entry = catalog.ledger(
            con,
            cand.asset,
            outcome,
            cand.run_id,
            versions=new,
            partition_keys=list(cand.versions),
            code_version=cand.code_version,
            row_count=sum(stats[v][0] for v in new),
            **ledger,
        )
        if outcome == "publish":
            replaced = catalog.move_pointer(con, cand.asset, cand.versions, action="publish", entry_id=entry, at=at)
            _publish_rows(con, cand.asset, new, replaced)
        elif outcome == "hold":
            catalog.set_status(con, [*new, cand.stray_version], "held", at)
        elif outcome == "branch":
            catalog.set_status(con, [*new, cand.stray_version], "branched", at)
        else:  # a newer parallel candidate replaces older ones of the same partitions
            older = catalog.versions_with_status(con, cand.asset, list(cand.versions), ["candidate"])
            catalog.set_status(con, older, "superseded", at)
            catalog.set_status(con, [*new, cand.stray_version], "candidate", at)
            _create_candidate_view(con, cand.asset)
        if stats.get(cand.stray_version, (0, ""))[0] == 0:
            catalog.forget_version(con, cand.stray_version)


def _create_candidate_view(con: duckdb.DuckDBPyConnection, asset: str) -> None:
    """``main.<asset>__candidate``: the newest parallel candidate of each partition."""
    _view(con, asset, asset + "__candidate", catalog.candidate_members(asset))


def create_merge_view(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    grain: Sequence[str],
    partition: str,
    source_view: str,
    merged_view: str,
) -> None:
    """A temp view of the rows a merge-by-key run publishes with missing keys kept: the run's rows, plus
    the published rows of its partitions whose grain key the run did not produce. `partition`: a published
    row's partition value in SQL, over ``p.`` (Scheme.expr("p."))."""
    source = quote_ident(source_view)
    if not table_exists(con, asset):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(merged_view)} AS SELECT * FROM {source}")
        return
    same_key = " AND ".join(f"s.{quote_ident(k)} IS NOT DISTINCT FROM p.{quote_ident(k)}" for k in grain)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {quote_ident(merged_view)} AS SELECT * FROM {source} UNION ALL BY NAME "
        f"SELECT p.* FROM main.{quote_ident(asset)} p "
        f"WHERE {partition} IN (SELECT partition_value FROM _bfa_run) "
        f"AND NOT EXISTS (SELECT 1 FROM {source} s WHERE {same_key})"
    )


def repoint(
    con: duckdb.DuckDBPyConnection,
    targets: dict[str, dict[str, int]],
    action: str,
    displaced: str,
    step_back: Collection[str] = (),
    **ledger: Any,
) -> None:
    """Publish existing versions (asset -> partition -> version) in one transaction, e.g. a rollback or an
    approval; the versions they replace get the status `displaced`. One ledger entry per asset. `step_back`:
    the assets whose targets are each partition's state before its last change (a plain rollback)."""
    with transaction(con, checkpoint=True):
        repoint_in(con, targets, action, displaced, step_back, **ledger)


def repoint_in(
    con: duckdb.DuckDBPyConnection,
    targets: dict[str, dict[str, int]],
    action: str,
    displaced: str,
    step_back: Collection[str] = (),
    **ledger: Any,
) -> None:
    """:func:`repoint` inside the caller's transaction, for a change that must commit with other writes."""
    at = catalog.now()
    for asset, versions in targets.items():
        entry = catalog.ledger(
            con,
            asset,
            action,
            None,
            versions=list(versions.values()),
            partition_keys=list(versions),
            row_count=catalog.row_count(con, list(versions.values())),
            **ledger,
        )
        replaced = catalog.move_pointer(
            con, asset, versions, action=action, entry_id=entry, displaced=displaced, step_back=asset in step_back,
            at=at,
        )  # fmt: skip
        _publish_rows(con, asset, list(versions.values()), replaced)
        if con.execute(
            "SELECT 1 FROM duckdb_views() WHERE schema_name = 'main' AND view_name = ?", [asset + "__candidate"]
        ).fetchall():
            _create_candidate_view(con, asset)  # a cut-over candidate is no longer one


class BranchError(WarehouseError):
    """A branch that cannot be published, approved or discarded as asked; nothing was changed."""


REVIEWED_RISKS = ("metric-changing repair", "schema migration", "production-critical rebuild")


def open_branch(con: duckdb.DuckDBPyConnection, branch: str, **fields: Any) -> dict:
    """:func:`catalog.open_branch`, a branch published or discarded already being a :class:`BranchError`."""
    try:
        return catalog.open_branch(con, branch, **fields)
    except ValueError as e:
        raise BranchError(str(e)) from None


def publish_branch(con: duckdb.DuckDBPyConnection, branch: str, actor: str | None, reason: str | None) -> dict:
    """Publish every asset and partition of `branch` in ONE transaction (a ledger entry per asset, naming the
    branch). Refused, changing nothing, when the branch is not open, needs its reviewer's approval (again, when it
    changed after the approval), has a held or unfinished version, or when a partition was published by something
    else after the branch staged it; the message names every problem and the way out.
    Returns asset -> partition -> version published."""
    with transaction(con, checkpoint=True):
        info = _open(con, branch)
        heads = catalog.branch_heads(con, branch)
        if not heads:
            raise BranchError(f"branch {branch} has nothing staged")
        problems, targets, ways = [], {}, []
        for asset, parts in sorted(heads.items()):
            published = {k: v for k, (v, _, _) in catalog.published_partitions(con, asset).items()}
            held = sorted(k for k, (_, status, _) in parts.items() if status != "branched")
            moved = sorted(k for k, (_, _, base) in parts.items() if published.get(k) != base)
            if held:
                problems.append(f"{asset} {_keys(held)} is held or still running in the branch")
            if moved:
                problems.append(f"{asset} {_keys(moved)} was published by something else after the branch staged it")
            targets[asset] = {k: v for k, (v, _, _) in sorted(parts.items())}
        for asset, stale in sorted(catalog.stale_reads(con, branch).items()):
            keys = sorted({k for k, _ in stale})
            inputs = sorted({label for _, label in stale})
            more = f" and {len(inputs) - 3} more" if len(inputs) > 3 else ""
            problems.append(f"{asset} {_keys(keys)} read {', '.join(inputs[:3])}{more}, changed since it ran")
        if problems:
            ways.append(f"re-run those partitions in the branch (materialize --branch {branch})")
        if info["risk"] in REVIEWED_RISKS:
            review = None
            if not info["approved_by"]:
                review = f"it ({info['risk']}) must be approved by its reviewer {info['reviewer']}"
            elif catalog.branch_staged_at(con, branch) > info["approved_at"]:
                review = f"it changed after {info['approved_by']} approved it"
            if review:
                problems.append(review)
                ways.append(f"backfill-assets branch approve {branch} --by {info['reviewer']} --reason ...")
        if problems:
            raise BranchError(
                f"branch {branch} not published: {'; '.join(problems)}. Next: {'; then '.join(ways)}; then publish"
            )
        why = reason or f"branch {branch}" + (f" (brief {info['brief']})" if info["brief"] else "")
        repoint_in(con, targets, "publish", "superseded", actor=actor, reason=why, params={"branch": branch})
        catalog.close_branch(con, branch, "published", actor)
    return targets


def discard_branch(con: duckdb.DuckDBPyConnection, branch: str, actor: str | None, reason: str | None) -> int:
    """Delete every version of an open branch; returns the rows freed. Consumers' views never saw them."""
    with transaction(con):
        _open(con, branch)
        freed = 0
        for asset in sorted(catalog.branch_heads(con, branch)):
            versions = catalog.branch_versions(con, branch, asset)
            rows = 0
            if table_exists(con, asset):
                rows = con.execute(
                    f"DELETE FROM {version_table(asset)} WHERE {VERSION_COLUMN} IN (SELECT unnest(?))", [versions]
                ).fetchall()[0][0]
            freed += rows
            catalog.set_status(con, versions, "discarded")
            catalog.ledger(
                con, asset, "discard", None, versions=versions, row_count=int(rows), actor=actor,
                reason=reason or f"branch {branch} discarded", params={"branch": branch},
            )  # fmt: skip
        catalog.close_branch(con, branch, "discarded", actor)
    return int(freed)


def approve_branch(con: duckdb.DuckDBPyConnection, branch: str, by: str, reason: str) -> None:
    """Record the approval; only the branch's reviewer may give it when it names one."""
    with transaction(con):
        info = _open(con, branch)
        if info["reviewer"] and by.strip().lower() != str(info["reviewer"]).strip().lower():
            raise BranchError(f"only {info['reviewer']}, the reviewer of branch {branch}, may approve it, not {by}")
        catalog.approve_branch(con, branch, by, reason)


def _open(con: duckdb.DuckDBPyConnection, branch: str) -> dict:
    info = catalog.branch_info(con, branch)
    if info is None:
        raise BranchError(f"no branch {branch!r}; backfill-assets branch list lists them")
    if info["state"] != "open":
        raise BranchError(f"branch {branch} is {info['state']} already")
    return info


def _keys(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]} ({len(keys)} partitions)"


BRANCH_SELF = "_bfa_branch_self"  # in a branch run: the table being written, as the branch would publish it


def branch_overlay(con: duckdb.DuckDBPyConnection, branch: str, skip: str) -> list[str]:
    """Temp views, on this connection only, that show each table with versions in `branch` as the branch would
    publish it: its branch version where it has one, else what is published, and the pointer
    ``bfa.published_metric`` reads. They shadow ``main.<table>`` for the run's transform and checks, but `skip`,
    the table being written, which is shown as :data:`BRANCH_SELF` (its uniqueness check reads its other
    partitions there); returns their names."""
    names = []
    heads = catalog.branch_heads(con, branch)
    staged = [(a, k, v) for a, parts in heads.items() for k, (v, status, _) in parts.items() if status == "branched"]
    assets, keys, versions = (list(c) for c in zip(*staged, strict=True)) if staged else ([], [], [])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _bfa_branch_pointer AS SELECT unnest(?::VARCHAR[]) AS asset, "
        "unnest(?::VARCHAR[]) AS partition_key, unnest(?::BIGINT[]) AS version",
        [assets, keys, versions],
    )
    con.execute(  # bfa.published_metric reads the branch's pointer too
        f"CREATE OR REPLACE TEMP VIEW {catalog.POINTER_VIEW} AS SELECT * FROM _bfa_branch_pointer UNION ALL "
        "SELECT p.asset, p.partition_key, p.version FROM bfa.published p ANTI JOIN _bfa_branch_pointer b "
        "USING (asset, partition_key)"
    )
    names.append(catalog.POINTER_VIEW)
    for asset in heads:
        name = BRANCH_SELF if asset == skip else asset  # the table being written keeps its main view
        pointer = f"temp.main.{catalog.POINTER_VIEW}"
        members = f"version IN (SELECT version FROM {pointer} WHERE asset = {catalog.literal(asset)})"
        _view(con, asset, name, members, temp=True)
        names.append(name)
    return names


def drop_overlay(con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> None:
    for name in names:
        con.execute(f"DROP VIEW IF EXISTS temp.main.{quote_ident(name)}")


def drop_versions(
    con: duckdb.DuckDBPyConnection, asset: str, versions: Sequence[int], status: str, action: str, **ledger: Any
) -> int:
    """Delete the rows of unpublished `versions` and mark them `status`; returns the rows freed."""
    if not versions:
        return 0
    with transaction(con):
        if set(versions) & set(catalog.published_version_ids(con, asset)):
            raise ValueError(f"{asset}: refusing to drop a published version")
        freed = 0
        if table_exists(con, asset):
            freed = con.execute(
                f"DELETE FROM {version_table(asset)} WHERE {VERSION_COLUMN} IN (SELECT unnest(?))", [list(versions)]
            ).fetchall()[0][0]
        catalog.set_status(con, versions, status)
        catalog.ledger(con, asset, action, None, versions=list(versions), row_count=int(freed), **ledger)
    return int(freed)
