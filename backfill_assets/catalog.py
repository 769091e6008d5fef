"""The catalog: every table of bookkeeping about versions, and the only module that writes them.

- ``bfa.versions``: one row per (table, partition) version: status, rows, content hash, its own columns, metrics.
- ``bfa.published``: the pointer, (table, partition) -> the version consumers read; one row per partition (a key).
- ``bfa.pointer_history``: every change of every pointer (from, to, action, ledger entry). Rollback, cascade
  and ``diff --base previous`` take their targets from it, never from version numbers or statuses.
- ``bfa.ledger``: one entry per publish / hold / approve / rollback / ..., with checks, metrics and parameters.

Pointer changes are a stack per partition: a publish (or approval, cutover, explicit rollback to a version)
pushes the new version; a plain rollback pops back to the state before the last push. Each change row keeps
``undo_change``, the change whose state a rollback returns to, so the target is one lookup and a second
rollback keeps going back instead of bringing back what the first one removed.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import duckdb

from .spec import quote_ident

OUTSIDE_WINDOW = "<outside window>"  # the partition key of a run's stray rows (outside its partitions)

_VERSIONS = """CREATE TABLE IF NOT EXISTS bfa.{name} (
    version BIGINT NOT NULL,        -- ids come from bfa.version_seq (no key: see _DDL)
    asset VARCHAR NOT NULL,
    partition_key VARCHAR NOT NULL,
    run_id VARCHAR,
    code_version VARCHAR,
    status VARCHAR NOT NULL CHECK (status IN ({statuses})),
    row_count BIGINT,
    content_hash VARCHAR,
    created_at TIMESTAMP NOT NULL,
    decided_at TIMESTAMP,
    metrics JSON,                   -- the spec's metric values over this version's rows
    columns VARCHAR[],              -- the columns this version has (the table may have more)
    staged_by VARCHAR,              -- host:pid:run token of the process writing it, while staged
    missing_inputs VARCHAR[],       -- provisional: the late upstream partitions ("asset key") it was made without
    branch VARCHAR,                 -- the branch it was staged in (see bfa.branches); NULL: none
    base_version BIGINT,            -- in a branch: the version published for its partition when it was staged
    reads STRUCT(asset VARCHAR, partition_key VARCHAR, version BIGINT)[]  -- in a branch: the upstream versions it read
);
CREATE TABLE IF NOT EXISTS bfa.branches (
    branch VARCHAR PRIMARY KEY,
    title VARCHAR,
    brief VARCHAR,                  -- the brief it runs, if any
    risk VARCHAR,
    reviewer VARCHAR,               -- who must approve it before it publishes (a brief's reviewer), if anyone
    state VARCHAR NOT NULL CHECK (state IN ('open', 'published', 'discarded', 'undone')),
    created_at TIMESTAMP NOT NULL,
    created_by VARCHAR,
    approved_by VARCHAR,
    approved_reason VARCHAR,
    approved_at TIMESTAMP,
    decided_by VARCHAR,
    decided_at TIMESTAMP
);
"""

_POINTER_HISTORY = """
CREATE TABLE IF NOT EXISTS bfa.{name} (
    change_id BIGINT NOT NULL,      -- from bfa.pointer_seq
    asset VARCHAR NOT NULL,
    partition_key VARCHAR NOT NULL,
    from_version BIGINT,            -- NULL: the partition's first publish
    to_version BIGINT NOT NULL,
    action VARCHAR NOT NULL,        -- the ledger action that moved it: publish, approve, cutover, rollback
    entry_id BIGINT NOT NULL,       -- that ledger entry
    undo_change BIGINT,             -- the change whose to_version a rollback from here restores; NULL: none
    changed_at TIMESTAMP NOT NULL
);
"""

# The ledger's lists and documents are stored uncompressed: every publish appends an entry, and DuckDB's
# checkpoint rewrites the row group it appends to, compressing it anew (see settle). At 100,000 partitions
# that checkpoint took 64 ms compressed and 31 ms uncompressed (benchmarks/partition_bench.py).
_LEDGER = """
CREATE TABLE IF NOT EXISTS bfa.{name} (
    entry_id BIGINT NOT NULL,       -- from bfa.ledger_seq
    recorded_at TIMESTAMP NOT NULL,
    asset VARCHAR NOT NULL,
    action VARCHAR NOT NULL,        -- publish | hold | candidate | approve | rollback | cutover | ...
    run_id VARCHAR,
    code_version VARCHAR,
    actor VARCHAR,
    partition_keys VARCHAR[] USING COMPRESSION uncompressed,
    versions BIGINT[] USING COMPRESSION uncompressed,
    row_count BIGINT,
    checks JSON USING COMPRESSION uncompressed,
    metrics JSON USING COMPRESSION uncompressed,
    params JSON USING COMPRESSION uncompressed,
    reason VARCHAR
);
"""

# Ids come from sequences, so they are unique by construction; the one key is the pointer's, one version per
# partition. A key on the append-only tables would only cost: DuckDB 1.5 writes a changed table's whole index
# at each checkpoint, and the key on bfa.versions made that 0.2 s of every publish at 100,000 partitions.
_DDL = """
CREATE SCHEMA IF NOT EXISTS bfa;
CREATE SEQUENCE IF NOT EXISTS bfa.version_seq START 1;
CREATE SEQUENCE IF NOT EXISTS bfa.ledger_seq START 1;
CREATE SEQUENCE IF NOT EXISTS bfa.pointer_seq START 1;
{versions}CREATE TABLE IF NOT EXISTS bfa.published (
    asset VARCHAR NOT NULL,
    partition_key VARCHAR NOT NULL,
    version BIGINT NOT NULL,
    published_at TIMESTAMP NOT NULL,
    PRIMARY KEY (asset, partition_key)
);
{pointer_history}{ledger}"""

STATUSES = {
    "staged": "being written by a run that has not finished",
    "published": "what consumers read now",
    "held": "failed a check; kept for inspection until approved or discarded",
    "candidate": "passed its checks under parallel_version; readable as <table>__candidate until cutover",
    "branched": "passed its checks in an open branch; published with the whole branch, or discarded with it",
    "superseded": "replaced by a newer publish; kept for diff and rollback",
    "rolled_back": "replaced by a rollback to an earlier version",
    "abandoned": "staged by a run that died; rows deleted",
    "discarded": "a held candidate a person rejected; rows deleted",
    "vacuumed": "removed by retention; rows deleted",
}
ROLLBACK_TARGETS = ("superseded", "rolled_back")  # versions whose rows are kept and may be published again
POINTER_ACTIONS = ("publish", "approve", "cutover", "rollback")  # ledger actions that move a pointer

# Fields of bfa.ledger a caller may fill, in a fixed order so inserts can bind them.
_LEDGER_FIELDS = ("code_version", "partition_keys", "versions", "row_count", "checks", "metrics", "params", "reason")

# An upstream's control totals for Reconcile rules: `metric_name` of each published partition of `asset_name`
# in [window_start, window_end), as recorded when its version was audited (no rescan of its rows). An empty
# partition counts as no value; a value never recorded, or a partition key that is not a date, is an error
# (a key is a date only when it is nothing else: DuckDB 1.5 casts '2025-01-01|eu' to a date).
# It reads the pointer through the view `_bfa_pointer`, which a run in a branch shadows on its own connection
# with a temp view of the branch's pointer (see warehouse.branch_overlay): its rules then read the branch.
POINTER_VIEW = "_bfa_pointer"
_PUBLISHED_METRIC = f"""
CREATE OR REPLACE VIEW main.{POINTER_VIEW} AS SELECT asset, partition_key, version FROM bfa.published;
CREATE OR REPLACE MACRO bfa.published_metric(asset_name, metric_name, window_start, window_end) AS TABLE
SELECT p.partition_date,
       CASE WHEN p.partition_date IS NULL THEN error(format(
                '{{}} partition {{}} is not a date: bfa.published_metric reconciles daily, weekly or monthly '
                'partitions only.', asset_name, p.partition_key))
            WHEN v.row_count > 0 AND (v.metrics -> metric_name) IS NULL THEN error(format(
                '{{}} partition {{}} has no recorded metric {{}}: {{}} declares no such metric, or the partition was '
                'published before it did. Republish that partition of {{}}.',
                asset_name, p.partition_key, metric_name, asset_name, asset_name))
            ELSE (v.metrics ->> metric_name)::DOUBLE END AS value
FROM (SELECT *, CASE WHEN regexp_full_match(partition_key, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}')
             THEN try_cast(partition_key AS DATE) END AS partition_date FROM {POINTER_VIEW}) p
JOIN bfa.versions v USING (version)
WHERE p.asset = asset_name
  AND (p.partition_date IS NULL OR p.partition_date >= window_start AND p.partition_date < window_end)
"""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection, checkpoint: bool = False) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back if anything inside raises; `checkpoint`: then :func:`settle`, for a
    transaction that changes what consumers read."""
    con.execute("BEGIN")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    if checkpoint:
        settle(con)


def settle(con: duckdb.DuckDBPyConnection) -> None:
    """Write what is committed into the file's storage now (a DuckDB checkpoint) rather than when it closes.

    Until then DuckDB keeps updated values (the published flags) and new rows beside the stored row groups and
    merges them on every scan: a full aggregation of the consumers' view in the writer's connection read 1.6x
    a plain table before it and 1.1x after (20,000 partitions, benchmarks/partition_bench.py). The checkpoint
    is the work DuckDB otherwise does when the file closes; it rewrites the row groups that changed, among them
    the ledger's last one. When another transaction of this process is writing, DuckDB refuses, and checkpoints
    later by itself."""
    with suppress(duckdb.TransactionException):
        con.execute("CHECKPOINT")


def has(con: duckdb.DuckDBPyConnection, table: str, column: str | None = None) -> bool:
    """Whether ``bfa.<table>`` (a catalog table or a version table) exists, or has `column`."""
    if column is None:
        sql, args = "SELECT 1 FROM duckdb_tables() WHERE schema_name = 'bfa' AND table_name = ?", [table]
    else:
        sql = "SELECT 1 FROM duckdb_columns() WHERE schema_name = 'bfa' AND table_name = ? AND column_name = ?"
        args = [table, column]
    return bool(con.execute(sql, args).fetchall())


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """Create the catalog, or bring one written by an older release up to date (each step once)."""
    old = has(con, "versions")
    had_history = has(con, "pointer_history")
    con.execute(
        _DDL.format(
            versions=_versions_ddl("versions"),
            pointer_history=_POINTER_HISTORY.format(name="pointer_history"),
            ledger=_LEDGER.format(name="ledger"),
        )
    )
    if old and not has(con, "versions", "metrics"):
        with transaction(con):  # versions keep their metrics: take them from the ledger entries that decided them
            con.execute("""
                ALTER TABLE bfa.versions ADD COLUMN metrics JSON;
                UPDATE bfa.versions v SET metrics = l.metrics -> 'after' -> l.partition_key FROM (
                    SELECT unnest(versions) AS version, unnest(partition_keys) AS partition_key, metrics
                    FROM bfa.ledger WHERE action IN ('publish', 'hold', 'candidate')
                ) l WHERE v.version = l.version""")
    for column, kind in (
        ("staged_by", "VARCHAR"), ("missing_inputs", "VARCHAR[]"), ("branch", "VARCHAR"), ("base_version", "BIGINT"),
        ("reads", "STRUCT(asset VARCHAR, partition_key VARCHAR, version BIGINT)[]"),
    ):  # fmt: skip
        if old and not has(con, "versions", column):
            con.execute(f"ALTER TABLE bfa.versions ADD COLUMN {column} {kind}")
    if old and not has(con, "versions", "columns"):
        with transaction(con):  # a version's columns: what the table had when versions did not keep their own
            con.execute("ALTER TABLE bfa.versions ADD COLUMN columns VARCHAR[]")
            for (asset,) in con.execute("SELECT DISTINCT asset FROM bfa.versions").fetchall():
                if has(con, asset):
                    con.execute(
                        "UPDATE bfa.versions SET columns = ? WHERE asset = ?", [physical_columns(con, asset), asset]
                    )
    # A constraint, a key or a column's compression cannot be altered: such a table is copied under the current DDL.
    if old and (not _statuses_current(con) or _has_key(con, "versions")):
        _recreate(con, "versions", _versions_ddl)
    if old and ("USING COMPRESSION" not in _table_sql(con, "ledger") or _has_key(con, "ledger")):
        _recreate(con, "ledger", _LEDGER.format)
    if old and _has_key(con, "pointer_history"):
        _recreate(con, "pointer_history", _POINTER_HISTORY.format)
    if old and not _has_key(con, "published"):  # the key a catalog from before it lacks
        con.execute("ALTER TABLE bfa.published ADD PRIMARY KEY (asset, partition_key)")
    if old and not had_history:
        with transaction(con):
            _history_from_ledger(con)
    for (asset,) in con.execute(_WITHOUT_FLAG, [PUBLISHED_COLUMN]).fetchall() if old else ():
        with transaction(con):  # rows say whether consumers read them (the view's old form still works)
            table = f"bfa.{quote_ident(asset)}"
            con.execute(f"ALTER TABLE {table} ADD COLUMN {PUBLISHED_COLUMN} BOOLEAN DEFAULT false")
            con.execute(
                f"UPDATE {table} SET {PUBLISHED_COLUMN} = true WHERE {VERSION_COLUMN} IN "
                "(SELECT version FROM bfa.published WHERE asset = ?)",
                [asset],
            )
    for (asset,) in con.execute(_NULLABLE_FLAG, [PUBLISHED_COLUMN]).fetchall() if old else ():
        # apart: DuckDB 1.5 neither adds a column with a constraint nor sets one in the transaction that added it
        con.execute(f"ALTER TABLE bfa.{quote_ident(asset)} ALTER COLUMN {PUBLISHED_COLUMN} SET NOT NULL")
    if old and con.execute(
        "SELECT 1 FROM duckdb_views() WHERE database_name = current_database() AND schema_name = 'main' "
        "AND view_name = '_bfa_source'"
    ).fetchone():  # a transform's scratch view, which releases before this one left in the warehouse for everyone
        con.execute("DROP VIEW main._bfa_source")
    con.execute(_PUBLISHED_METRIC)  # re-created each time: DuckDB binds a macro when it is created


# Version tables written before rows carried the published flag.
_WITHOUT_FLAG = """
SELECT table_name FROM duckdb_tables() WHERE schema_name = 'bfa' AND table_name IN (SELECT asset FROM bfa.versions)
EXCEPT SELECT table_name FROM duckdb_columns() WHERE schema_name = 'bfa' AND column_name = ?
"""
_NULLABLE_FLAG = """
SELECT table_name FROM duckdb_columns() WHERE schema_name = 'bfa' AND column_name = ? AND is_nullable
AND table_name IN (SELECT asset FROM bfa.versions)
"""


def _recreate(con: duckdb.DuckDBPyConnection, table: str, ddl: Callable[..., str]) -> None:
    """Copy ``bfa.<table>`` into a table made by ``ddl(name=...)`` and put the copy in its place, in one
    transaction."""
    with transaction(con):
        con.execute(ddl(name=f"{table}_current"))
        con.execute(f"INSERT INTO bfa.{table}_current BY NAME SELECT * FROM bfa.{table}")
        con.execute(f"DROP TABLE bfa.{table}")
        con.execute(f"ALTER TABLE bfa.{table}_current RENAME TO {table}")


def _versions_ddl(name: str) -> str:
    return _VERSIONS.format(name=name, statuses=", ".join(f"'{s}'" for s in STATUSES))


def _statuses_current(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether bfa.versions' status CHECK allows every status of this release."""
    (check,) = con.execute(
        "SELECT expression FROM duckdb_constraints() WHERE schema_name = 'bfa' AND table_name = 'versions' "
        "AND constraint_type = 'CHECK'"
    ).fetchone() or ("",)
    return all(f"'{status}'" in check for status in STATUSES)


def _table_sql(con: duckdb.DuckDBPyConnection, table: str) -> str:
    (sql,) = con.execute(
        "SELECT sql FROM duckdb_tables() WHERE schema_name = 'bfa' AND table_name = ?", [table]
    ).fetchone()
    return sql


def _has_key(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        con.execute(
            "SELECT 1 FROM duckdb_constraints() WHERE schema_name = 'bfa' AND table_name = ? "
            "AND constraint_type = 'PRIMARY KEY'",
            [table],
        ).fetchall()
    )


def _history_from_ledger(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild the pointer history of a catalog that predates it by replaying the ledger's pointer moves. An
    old rollback entry counts as a step back when it restored the state before the last change, else as a
    move to the version it named."""
    entries = con.execute(
        "SELECT entry_id, recorded_at, asset, action, partition_keys, versions FROM bfa.ledger "
        "WHERE action IN (SELECT unnest(?)) ORDER BY entry_id",
        [list(POINTER_ACTIONS)],
    ).fetchall()
    state: dict[tuple[str, str], list[tuple[int, int]]] = {}  # partition -> stack of (change id, version)
    rows = []
    for entry_id, at, asset, action, keys, versions in entries:
        for key, version in zip(keys or [], versions or [], strict=True):
            stack = state.setdefault((asset, key), [])
            change_id = con.execute("SELECT nextval('bfa.pointer_seq')").fetchall()[0][0]
            current = stack[-1][1] if stack else None
            if action == "rollback" and len(stack) >= 2 and stack[-2][1] == version:
                stack.pop()
                stack[-1] = (change_id, version)
            else:
                stack.append((change_id, version))
            undo = stack[-2][0] if len(stack) >= 2 else None
            rows.append((change_id, asset, key, current, version, action, entry_id, undo, at))
    if rows:
        columns = list(zip(*rows, strict=True))
        con.execute(
            "INSERT INTO bfa.pointer_history SELECT unnest(?::BIGINT[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
            "unnest(?::BIGINT[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[]), unnest(?::BIGINT[]), "
            "unnest(?::BIGINT[]), unnest(?::TIMESTAMP[])",
            [list(c) for c in columns],
        )


# The version table's own columns: each row's version, and whether consumers read it (see warehouse).
VERSION_COLUMN, PUBLISHED_COLUMN = "_bfa_version", "_bfa_published"


def physical_columns(con: duckdb.DuckDBPyConnection, asset: str) -> list[str]:
    """The data columns of the version table ``bfa.<asset>`` in table order (not the version table's own)."""
    return [c for c in relation_columns(con, "bfa", asset) if c not in (VERSION_COLUMN, PUBLISHED_COLUMN)]


def relation_columns(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> list[str]:
    """The columns of the table or view `schema`.`name` in order (none when there is no such relation)."""
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? ORDER BY column_index",
        [schema, name],
    ).fetchall()
    return [r[0] for r in rows]


# --- versions -------------------------------------------------------------------------------------------

_LIVE_RUNS: set[str] = set()  # run tokens of this process's write_audit_publish calls in progress
_HOST = socket.gethostname()


@dataclass(frozen=True)
class Candidate:
    """Versions allocated for one run of one table: one per partition, plus one for stray rows."""

    asset: str
    run_id: str
    code_version: str
    versions: dict[str, int]  # partition key -> version
    stray_version: int  # rows whose partition column falls outside the run's window
    token: str  # identifies this run's process and call while it stages (see abandoned_runs)


def allocate(
    con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str], run_id: str, code_version: str
) -> Candidate:
    """Reserve one version per partition, committed as 'staged' before any row is written, so a crash leaves
    a trace that :func:`orphans` finds on a later run."""
    n = len(keys) + 1
    ids = [r[0] for r in con.execute("SELECT nextval('bfa.version_seq') FROM range(?)", [n]).fetchall()]
    token = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex}"
    _LIVE_RUNS.add(token)
    # Parallel unnests zip the lists: one statement, where executemany costs ~0.6 ms a row.
    con.execute(
        "INSERT INTO bfa.versions (version, asset, partition_key, run_id, code_version, status, created_at, "
        "staged_by) SELECT unnest(?::BIGINT[]), ?, unnest(?::VARCHAR[]), ?, ?, 'staged', ?, ?",
        [ids, asset, [*keys, OUTSIDE_WINDOW], run_id, code_version, now(), token],
    )
    return Candidate(asset, run_id, code_version, dict(zip(keys, ids[:-1], strict=True)), ids[-1], token)


def finished(cand: Candidate) -> None:
    """The run of `cand` has decided (or given up): its staged versions, if any are left, are orphans."""
    _LIVE_RUNS.discard(cand.token)


def orphans(con: duckdb.DuckDBPyConnection, asset: str) -> list[int]:
    """Staged versions of `asset` whose run is gone: it ran in this process and is no longer in progress, or
    in a process of this host that no longer exists (or before runs were identified). Versions another live
    run is staging are left alone."""
    rows = con.execute(
        "SELECT version, staged_by FROM bfa.versions WHERE asset = ? AND status = 'staged'", [asset]
    ).fetchall()
    return [v for v, owner in rows if _gone(owner)]


def _gone(owner: str | None) -> bool:
    if not owner:
        return True
    host, pid, token = owner.rsplit(":", 2)
    if host != _HOST:
        return False  # another machine's run: it alone knows whether it is alive
    if int(pid) == os.getpid():
        return token not in _LIVE_RUNS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def set_status(con: duckdb.DuckDBPyConnection, versions: Sequence[int], status: str, at: dt.datetime | None = None):
    if status not in STATUSES:
        raise ValueError(f"unknown version status {status!r}")
    con.execute(
        "UPDATE bfa.versions SET status = ?, decided_at = ?, staged_by = NULL WHERE version IN (SELECT unnest(?))",
        [status, at or now(), list(versions)],
    )


def record_stats(
    con: duckdb.DuckDBPyConnection,
    stats: Mapping[int, tuple[int, str]],
    metrics: Mapping[int, Mapping[str, Any]],
    columns: Sequence[str],
) -> None:
    """Rows, content hash, metric values and columns of newly staged versions."""
    con.execute(
        "UPDATE bfa.versions v SET row_count = s.n, content_hash = s.h, metrics = s.m, columns = $1 FROM (SELECT "
        "unnest($2::BIGINT[]) AS version, unnest($3::BIGINT[]) AS n, unnest($4::VARCHAR[]) AS h, "
        "unnest($5::JSON[]) AS m) s WHERE v.version = s.version",  # numbered: DuckDB 1.5 binds FROM's ? first
        [
            list(columns),
            list(stats),
            [n for n, _ in stats.values()],
            [h for _, h in stats.values()],
            [_json(metrics[v]) if metrics.get(v) else None for v in stats],
        ],
    )


def mark_provisional(con: duckdb.DuckDBPyConnection, missing: Mapping[int, Sequence[str]]) -> None:
    """version -> the late upstream partitions it was published without."""
    if missing:
        con.execute(
            "UPDATE bfa.versions v SET missing_inputs = m.missing FROM (SELECT unnest(?::BIGINT[]) AS version, "
            "unnest(?::VARCHAR[][]) AS missing) m WHERE v.version = m.version",
            [list(missing), [list(m) for m in missing.values()]],
        )


def input_label(asset: str, key: str) -> str:
    """How an upstream partition is named in ``missing_inputs`` (and in messages): "asset key"."""
    return f"{asset} {key}"


def parse_input(label: str) -> tuple[str, str]:
    """(asset, key) of an :func:`input_label`; asset names hold no space (they are identifiers)."""
    asset, key = label.split(" ", 1)
    return asset, key


def provisional(con: duckdb.DuckDBPyConnection, asset: str | None = None) -> dict[tuple[str, str], list[str]]:
    """(asset, partition) -> the late inputs its published version was made without, for provisional ones."""
    rows = con.execute(
        "SELECT p.asset, p.partition_key, v.missing_inputs FROM bfa.published p JOIN bfa.versions v USING (version) "
        "WHERE len(v.missing_inputs) > 0 AND (? IS NULL OR p.asset = ?) ORDER BY 1, 2",
        [asset, asset],
    ).fetchall()
    return {(a, k): list(m) for a, k, m in rows}


def forget_version(con: duckdb.DuckDBPyConnection, version: int) -> None:
    """Remove an empty stray version's row: nothing was written outside the run's partitions."""
    con.execute("DELETE FROM bfa.versions WHERE version = ?", [version])


def version_columns(con: duckdb.DuckDBPyConnection, versions: Sequence[int]) -> dict[int, tuple[str, ...]]:
    """version -> the columns it has."""
    rows = con.execute(
        "SELECT version, columns FROM bfa.versions WHERE version IN (SELECT unnest(?))", [list(versions)]
    ).fetchall()
    return {v: tuple(c or ()) for v, c in rows}


def kept_versions_with(con: duckdb.DuckDBPyConnection, asset: str, column: str, token: str) -> list[int]:
    """Versions of `asset` whose rows are kept (not abandoned, discarded or vacuumed) and that have `column`, or
    whose columns are not recorded yet; versions another run is staging count, the run of `token`'s do not."""
    rows = con.execute(
        "SELECT version FROM bfa.versions WHERE asset = ? AND status NOT IN ('abandoned', 'discarded', 'vacuumed') "
        "AND staged_by IS DISTINCT FROM ? AND (columns IS NULL OR list_contains(columns, ?)) ORDER BY version",
        [asset, token, column],
    ).fetchall()
    return [r[0] for r in rows]


def row_count(con: duckdb.DuckDBPyConnection, versions: Sequence[int]) -> int:
    return int(
        con.execute(
            "SELECT coalesce(sum(row_count), 0) FROM bfa.versions WHERE version IN (SELECT unnest(?))",
            [list(versions)],
        ).fetchall()[0][0]
    )


def versions_with_status(
    con: duckdb.DuckDBPyConnection, asset: str, partitions: Sequence[str], statuses: Sequence[str]
) -> list[int]:
    return [
        r[0]
        for r in con.execute(
            "SELECT version FROM bfa.versions WHERE asset = ? AND partition_key IN (SELECT unnest(?)) "
            "AND status IN (SELECT unnest(?))",
            [asset, list(partitions), list(statuses)],
        ).fetchall()
    ]


def version_info(con: duckdb.DuckDBPyConnection, asset: str, key: str, version: int) -> tuple[str, dt.datetime] | None:
    """(status, decided_at) of `version` when it is a version of `asset` [`key`], else None."""
    found = con.execute(
        "SELECT status, decided_at FROM bfa.versions WHERE version = ? AND asset = ? AND partition_key = ?",
        [version, asset, key],
    ).fetchall()
    return found[0] if found else None


# --- the pointer ----------------------------------------------------------------------------------------


def published_partitions(con: duckdb.DuckDBPyConnection, asset: str) -> dict[str, tuple[int, int, str]]:
    """partition key -> (version, rows, content hash) of what consumers read now."""
    rows = con.execute(
        "SELECT p.partition_key, p.version, v.row_count, v.content_hash FROM bfa.published p "
        "JOIN bfa.versions v USING (version) WHERE p.asset = ? ORDER BY 1",
        [asset],
    ).fetchall()
    return {k: (v, n, h) for k, v, n, h in rows}


def published_keys(con: duckdb.DuckDBPyConnection | None, branch: str | None = None) -> Callable[[str], set[str]]:
    """asset -> its published partition keys now (and those `branch` has passing versions of), read once per
    asset (nothing without a warehouse)."""
    cache: dict[str, set[str]] = {}
    heads = branch_heads(con, branch) if con is not None and branch else {}
    staged = {a: {k for k, (_, status, _) in parts.items() if status == "branched"} for a, parts in heads.items()}

    def published(asset: str) -> set[str]:
        if asset not in cache:
            cache[asset] = set(published_partitions(con, asset)) if con is not None else set()
            cache[asset] |= staged.get(asset, set())
        return cache[asset]

    return published


# A view's members: the versions of an asset it shows, as a condition on their rows in bfa.versions without
# parameters (a view cannot bind them).
PUBLISHED = "status = 'published'"  # set in the same transaction as the pointer (see move_pointer)


def candidate_members(asset: str) -> str:
    """The newest parallel candidate of each partition of `asset`."""
    return (
        f"version IN (SELECT max(version) FROM bfa.versions WHERE asset = {literal(asset)} "
        f"AND status = 'candidate' AND partition_key <> {literal(OUTSIDE_WINDOW)} GROUP BY partition_key)"
    )


def literal(text: str) -> str:
    """`text` as an SQL string literal, for the few queries a view must hold (it cannot bind parameters)."""
    return "'" + text.replace("'", "''") + "'"


# The versions of an asset that a members condition selects, as ranges of version ids that hold no other
# version of the asset whose rows are kept: a view then selects them with a few comparisons per row, pushed
# into the scan, where zone maps skip whole row groups. Versions without rows (abandoned, discarded,
# vacuumed, never written) do not split a range; ids are drawn from one sequence and committed as 'staged'
# before any row is written, so a version allocated later lies beyond every range.
_RANGES = """
WITH kept AS (
    SELECT version, ({members}) AS member FROM bfa.versions
    WHERE asset = ? AND status NOT IN ('abandoned', 'discarded', 'vacuumed')
), edges AS (
    SELECT version, member, lag(member) OVER w IS DISTINCT FROM member AS first,
           lead(member) OVER w IS DISTINCT FROM member AS last
    FROM kept WINDOW w AS (ORDER BY version)
), ends AS (SELECT version, first, last FROM edges WHERE member AND (first OR last))
SELECT version, CASE WHEN last THEN version ELSE lead(version) OVER (ORDER BY version) END
FROM ends QUALIFY first ORDER BY version LIMIT ?
"""


def version_ranges(con: duckdb.DuckDBPyConnection, asset: str, members: str, limit: int) -> list[tuple[int, int]]:
    """The first `limit` ranges (lowest, highest id) of the versions of `asset` that `members` selects (see
    _RANGES). Measured on 110,000 versions: 10 ms (a running count over a FILTER clause took 15 s)."""
    return con.execute(_RANGES.format(members=members), [asset, limit]).fetchall()


def members_query(asset: str, members: str) -> str:
    """The versions of `asset` that `members` selects, as a query a view can hold."""
    return f"SELECT version FROM bfa.versions WHERE asset = {literal(asset)} AND ({members})"


def member_bounds(con: duckdb.DuckDBPyConnection, asset: str, members: str) -> tuple[int, int]:
    """The lowest and highest version of `asset` that `members` selects."""
    return con.execute(
        f"SELECT min(version), max(version) FROM bfa.versions WHERE asset = ? AND ({members})", [asset]
    ).fetchall()[0]


def member_columns(con: duckdb.DuckDBPyConnection, asset: str, members: str) -> set[str]:
    """The columns any version of `asset` that `members` selects has."""
    rows = con.execute(
        f"SELECT DISTINCT columns FROM bfa.versions WHERE asset = ? AND ({members})", [asset]
    ).fetchall()
    return {c for (cols,) in rows for c in cols or ()}


def published_version_ids(con: duckdb.DuckDBPyConnection, asset: str) -> list[int]:
    return [
        r[0] for r in con.execute("SELECT version FROM bfa.published WHERE asset = ? ORDER BY 1", [asset]).fetchall()
    ]


def move_pointer(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    versions: Mapping[str, int],
    *,
    action: str,
    entry_id: int,
    displaced: str = "superseded",
    step_back: bool = False,
    at: dt.datetime | None = None,
) -> list[int]:
    """Make `versions` (partition -> version) the published ones and record each change in the pointer
    history; the versions they replace get the status `displaced`, and are returned. `step_back`: this is a
    rollback to the state before each partition's last change (see :func:`rollback_targets`), so a later
    rollback goes back further; otherwise the move is pushed and a rollback returns here. Call inside a
    transaction, with the rows' published flags and the consumers' view changed in it (see warehouse.repoint)."""
    at = at or now()
    keys = list(versions)
    last = _last_changes(con, asset, keys)
    undo: list[int | None] = []
    for key in keys:
        change = last.get(key)
        if step_back:
            restored = _change(con, change[2]) if change and change[2] is not None else None
            if restored is None or restored[1] != versions[key]:
                raise ValueError(f"{asset} [{key}]: version {versions[key]} is not the state before the last change")
            undo.append(restored[2])  # the state before the one restored
        else:
            undo.append(change[0] if change else None)
    replaced = con.execute(
        "UPDATE bfa.versions SET status = ?, decided_at = ? WHERE version IN "
        "(SELECT version FROM bfa.published WHERE asset = ? AND partition_key IN (SELECT unnest(?))) RETURNING version",
        [displaced, at, asset, keys],
    ).fetchall()
    con.execute(
        "INSERT INTO bfa.pointer_history SELECT nextval('bfa.pointer_seq'), ?, k, p.version, t, ?, ?, u, ? "
        "FROM (SELECT unnest(?::VARCHAR[]) AS k, unnest(?::BIGINT[]) AS t, unnest(?::BIGINT[]) AS u) "
        "LEFT JOIN bfa.published p ON p.asset = ? AND p.partition_key = k",
        [asset, action, entry_id, at, keys, list(versions.values()), undo, asset],
    )
    con.execute(
        "INSERT INTO bfa.published SELECT ?, unnest(?::VARCHAR[]), unnest(?::BIGINT[]), ? "
        "ON CONFLICT DO UPDATE SET version = excluded.version, published_at = excluded.published_at",
        [asset, keys, list(versions.values()), at],
    )
    set_status(con, list(versions.values()), "published", at)
    return [r[0] for r in replaced]


def _last_changes(
    con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str]
) -> dict[str, tuple[int, int, int | None]]:
    """partition -> (change id, to_version, undo_change) of its latest pointer change."""
    rows = con.execute(
        "SELECT partition_key, change_id, to_version, undo_change FROM bfa.pointer_history "
        "WHERE asset = ? AND partition_key IN (SELECT unnest(?)) "
        "QUALIFY row_number() OVER (PARTITION BY partition_key ORDER BY change_id DESC) = 1",
        [asset, list(keys)],
    ).fetchall()
    return {k: (c, t, u) for k, c, t, u in rows}


def _change(con: duckdb.DuckDBPyConnection, change_id: int) -> tuple[int, int, int | None]:
    """(change id, to_version, undo_change) of one pointer change."""
    return con.execute(
        "SELECT change_id, to_version, undo_change FROM bfa.pointer_history WHERE change_id = ?", [change_id]
    ).fetchall()[0]


def previous_versions(con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
    """partition -> (version, status) a rollback of its current pointer restores: what the pointer held before
    its last change that was not itself rolled back. Partitions with no such state are left out."""
    last = _last_changes(con, asset, keys)
    undo = {k: u for k, (_, _, u) in last.items() if u is not None}
    if not undo:
        return {}
    rows = con.execute(
        "SELECT h.change_id, h.to_version, v.status FROM bfa.pointer_history h "
        "JOIN bfa.versions v ON v.version = h.to_version WHERE h.change_id IN (SELECT unnest(?))",
        [list(undo.values())],
    ).fetchall()
    by_change = {c: (v, s) for c, v, s in rows}
    return {k: by_change[u] for k, u in undo.items()}


def replaced_by_entries(con: duckdb.DuckDBPyConnection, entry_ids: Sequence[int]) -> set[int]:
    """The versions the pointer changes of these ledger entries replaced."""
    return {
        r[0]
        for r in con.execute(
            "SELECT from_version FROM bfa.pointer_history WHERE entry_id IN (SELECT unnest(?)) "
            "AND from_version IS NOT NULL",
            [list(entry_ids)],
        ).fetchall()
    }


def newest_pending(con: duckdb.DuckDBPyConnection, asset: str, status: str) -> dict[str, int]:
    """partition -> its newest `status` version (held or candidate) newer than what is published."""
    rows = con.execute(
        """
        SELECT v.partition_key, max(v.version) FROM bfa.versions v
        LEFT JOIN bfa.published p ON p.asset = v.asset AND p.partition_key = v.partition_key
        WHERE v.asset = ? AND v.status = ? AND v.partition_key <> ? AND v.version > coalesce(p.version, 0)
        GROUP BY 1 ORDER BY 1
        """,
        [asset, status, OUTSIDE_WINDOW],
    ).fetchall()
    return dict(rows)


def strays_of_runs(con: duckdb.DuckDBPyConnection, asset: str, versions: Sequence[int], status: str) -> list[int]:
    """The stray-row versions (rows outside their run's partitions) of the runs that made `versions`."""
    return [
        r[0]
        for r in con.execute(
            "SELECT version FROM bfa.versions WHERE asset = ? AND status = ? AND partition_key = ? "
            "AND run_id IN (SELECT run_id FROM bfa.versions WHERE version IN (SELECT unnest(?)))",
            [asset, status, OUTSIDE_WINDOW, list(versions)],
        ).fetchall()
    ]


def runs_of(con: duckdb.DuckDBPyConnection, versions: Sequence[int]) -> dict[int, str | None]:
    """version -> the run that made it."""
    rows = con.execute(
        "SELECT version, run_id FROM bfa.versions WHERE version IN (SELECT unnest(?))", [list(versions)]
    ).fetchall()
    return dict(rows)


def version_rows(
    con: duckdb.DuckDBPyConnection, asset: str, partitions: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Every version of each partition of `asset` (or of `partitions`; strays left out), newest first, with its
    run's checks (name -> passed) and the late inputs of a provisional version."""
    cur = con.execute(
        """
        SELECT v.partition_key AS partition, v.version, v.status, v.run_id, v.code_version, v.row_count AS rows,
               v.content_hash, v.created_at, v.decided_at, v.missing_inputs, l.checks
        FROM bfa.versions v
        LEFT JOIN bfa.ledger l
          ON l.asset = v.asset AND l.run_id = v.run_id AND l.action IN ('publish', 'hold', 'candidate')
        WHERE v.asset = ? AND v.partition_key <> ? AND (?::VARCHAR[] IS NULL OR list_contains(?, v.partition_key))
        ORDER BY v.partition_key, v.version DESC
        """,
        [asset, OUTSIDE_WINDOW, partitions, partitions],
    )
    cols = [d[0] for d in cur.description]
    out = []
    for r in cur.fetchall():
        row = dict(zip(cols, r, strict=True))
        row["checks"] = {name: c.passed for name, c in checks_of(row["checks"]).items()}
        out.append(row)
    return out


def retention_candidates(
    con: duckdb.DuckDBPyConnection, asset: str, keep_versions: int, decided_before: dt.datetime
) -> list[tuple[int, str, int | None, str, dt.datetime]]:
    """(version, partition, rows, status, decided_at) of the superseded or rolled-back versions of `asset`
    beyond its newest `keep_versions` per partition and decided before `decided_before`."""
    return con.execute(
        """
        SELECT version, partition_key, row_count, status, decided_at FROM (
            SELECT *, row_number() OVER (PARTITION BY partition_key ORDER BY version DESC) AS newest
            FROM bfa.versions
            WHERE asset = ? AND status IN ('published', 'superseded', 'rolled_back')
        ) WHERE status <> 'published' AND newest > ? AND decided_at < ?
        ORDER BY partition_key, version
        """,
        [asset, keep_versions, decided_before],
    ).fetchall()


def published_facts(con: duckdb.DuckDBPyConnection, assets: Sequence[str] | None = None) -> list[tuple]:
    """(asset, partition, rows, code version) of every published partition (of `assets`, when given)."""
    return con.execute(
        "SELECT p.asset, p.partition_key, v.row_count, v.code_version FROM bfa.published p "
        "JOIN bfa.versions v USING (version) WHERE ? IS NULL OR p.asset IN (SELECT unnest(?))",
        [assets, assets],
    ).fetchall()


# --- the ledger -----------------------------------------------------------------------------------------
#
# Its JSON columns, declared once (and only read here):
# - checks: check name -> CheckRecord;
# - metrics: {"before": {partition: {metric: value}}, "after": {...}};
# - params: {"window": {"start", "end"}, "timings_s": {"transform", "audit", "profile"},
#            "run_tags": {tag: value}, ...the caller's record}.
RUN_TAGS, TIMINGS, WINDOW = "run_tags", "timings_s", "window"


@dataclass(frozen=True)
class CheckRecord:
    """One check's outcome as the ledger keeps it."""

    passed: bool
    summary: str
    figures: dict[str, Any]
    seconds: float
    warn: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary,
            "figures": self.figures,
            "seconds": round(self.seconds, 4),
            **({"warn": True} if self.warn else {}),
        }


def checks_of(raw: str | None) -> dict[str, CheckRecord]:
    """The checks JSON of a ledger entry."""
    return {
        name: CheckRecord(c["passed"], c.get("summary", ""), c.get("figures", {}), c.get("seconds", 0.0), c.get("warn", False))  # noqa: E501
        for name, c in json.loads(raw or "{}").items()
    }


_TAG = f"(params->'{RUN_TAGS}'->>?)"  # a run tag of an entry; the tag's name is bound


def runs_tagged_like(con: duckdb.DuckDBPyConnection, runs: Sequence[str], tag: str) -> list[str]:
    """Every run that carries the same value of run tag `tag` as one of `runs` (e.g. the same backfill)."""
    return [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT run_id FROM bfa.ledger WHERE {_TAG} IN "
            f"(SELECT {_TAG} FROM bfa.ledger WHERE run_id IN (SELECT unnest(?)) AND {_TAG} NOT NULL)",
            [tag, tag, list(runs), tag],
        ).fetchall()
    ]


def entries_tagged(
    con: duckdb.DuckDBPyConnection, tag: str, values: Sequence[str], actions: Sequence[str]
) -> list[dict[str, Any]]:
    """The ledger entries with one of `actions` whose run carried `tag` = one of `values`, oldest first:
    entry_id, asset, action, partition_keys, versions, checks (CheckRecords), metrics (before/after)."""
    cur = con.execute(
        "SELECT entry_id, asset, action, partition_keys, versions, checks, metrics FROM bfa.ledger "
        f"WHERE action IN (SELECT unnest(?)) AND {_TAG} IN (SELECT unnest(?)) ORDER BY entry_id",
        [list(actions), tag, list(values)],
    )
    out = []
    for entry_id, asset, action, keys, versions, checks, metrics in cur.fetchall():
        out.append(
            {
                "entry_id": entry_id, "asset": asset, "action": action, "partition_keys": list(keys or []),
                "versions": list(versions or []), "checks": checks_of(checks), "metrics": json.loads(metrics or "{}"),
            }
        )  # fmt: skip
    return out


def tag_values(con: duckdb.DuckDBPyConnection, tag: str, where_tag: str, value: str) -> list[str]:
    """The values of run tag `tag` on the entries whose run carried `where_tag` = `value`."""
    return [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT {_TAG} FROM bfa.ledger WHERE {_TAG} = ? AND {_TAG} NOT NULL",
            [tag, where_tag, value, tag],
        ).fetchall()
    ]


def run_outcomes(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[tuple[str, str, int]]:
    """(asset, action, partitions) of the publish, branch and hold entries of these runs."""
    return con.execute(
        "SELECT asset, action, sum(len(partition_keys)) FROM bfa.ledger "
        "WHERE run_id IN (SELECT unnest(?)) AND action IN ('publish', 'branch', 'hold') GROUP BY 1, 2",
        [list(run_ids)],
    ).fetchall()


def seconds_per_partition(con: duckdb.DuckDBPyConnection, assets: Sequence[str], runs: int = 10) -> dict[str, float]:
    """Transform + audit seconds per partition over each asset's last `runs` publish, branch or hold entries."""
    rows = con.execute(
        f"""
        SELECT asset, sum(seconds) / sum(partitions) FROM (
            SELECT asset, len(partition_keys) AS partitions,
                   CAST(params->'$.{TIMINGS}.transform' AS DOUBLE) + CAST(params->'$.{TIMINGS}.audit' AS DOUBLE)
                       AS seconds,
                   row_number() OVER (PARTITION BY asset ORDER BY entry_id DESC) AS recent
            FROM bfa.ledger
            WHERE action IN ('publish', 'branch', 'hold') AND asset IN (SELECT unnest(?)) AND len(partition_keys) > 0
        ) WHERE recent <= ? AND seconds IS NOT NULL GROUP BY 1
        """,
        [list(assets), runs],
    ).fetchall()
    return dict(rows)



def ledger(con: duckdb.DuckDBPyConnection, asset: str, action: str, run_id: str | None, **fields: Any) -> int:
    """Append a ledger entry; returns its id."""
    actor = fields.pop("actor", None) or _actor()
    unknown = fields.keys() - set(_LEDGER_FIELDS)
    if unknown:
        raise TypeError(f"unknown ledger fields {sorted(unknown)}")
    values = [fields.get(f) for f in _LEDGER_FIELDS]
    for i, f in enumerate(_LEDGER_FIELDS):
        if f in ("checks", "metrics", "params") and values[i] is not None:
            values[i] = _json(values[i])
    return con.execute(
        f"INSERT INTO bfa.ledger (entry_id, recorded_at, asset, action, run_id, actor, {', '.join(_LEDGER_FIELDS)}) "
        f"VALUES (nextval('bfa.ledger_seq'), ?, ?, ?, ?, ?, {', '.join('?' * len(_LEDGER_FIELDS))}) "
        "RETURNING entry_id",
        [now(), asset, action, run_id, actor, *values],
    ).fetchall()[0][0]


def _json(value: Any) -> str:
    """JSON as the catalog stores it: decimals and dates as strings, keys sorted."""
    return json.dumps(value, default=str, sort_keys=True)


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --- branches -------------------------------------------------------------------------------------------

BRANCH_FIELDS = (
    "branch", "title", "brief", "risk", "reviewer", "state", "created_at", "created_by", "approved_by",
    "approved_reason", "approved_at", "decided_by", "decided_at",
)  # fmt: skip
IN_BRANCH = ("branched", "held", "staged")  # statuses of a branch's versions that are still its candidates


def open_branch(
    con: duckdb.DuckDBPyConnection,
    branch: str,
    *,
    title: str | None = None,
    brief: str | None = None,
    risk: str | None = None,
    reviewer: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """The branch `branch`, opened now unless it exists; a branch that was published or discarded is closed."""
    con.execute(
        "INSERT INTO bfa.branches (branch, title, brief, risk, reviewer, state, created_at, created_by) "
        "VALUES (?, ?, ?, ?, ?, 'open', ?, ?) ON CONFLICT DO NOTHING",
        [branch, title, brief, risk, reviewer, now(), actor or getpass.getuser()],
    )
    info = branch_info(con, branch)
    if info["state"] != "open":
        raise ValueError(f"branch {branch!r} was {info['state']} at {info['decided_at']:%Y-%m-%d %H:%M}; open another")
    return info


def branch_info(con: duckdb.DuckDBPyConnection, branch: str) -> dict[str, Any] | None:
    row = con.execute(f"SELECT {', '.join(BRANCH_FIELDS)} FROM bfa.branches WHERE branch = ?", [branch]).fetchone()
    return dict(zip(BRANCH_FIELDS, row, strict=True)) if row else None


def branches(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every branch, oldest first (none in a warehouse whose catalog predates branches and was only read since)."""
    if not has(con, "branches"):
        return []
    rows = con.execute(f"SELECT {', '.join(BRANCH_FIELDS)} FROM bfa.branches ORDER BY created_at").fetchall()
    return [dict(zip(BRANCH_FIELDS, r, strict=True)) for r in rows]


# The branch's newest version of each partition (held, staged or passing), with what it was staged on and read.
_BRANCH_HEADS = (
    "SELECT asset, partition_key, version, status, base_version, reads FROM bfa.versions "
    "WHERE branch = $branch AND status IN (SELECT unnest($in_branch)) AND partition_key <> $outside "
    "QUALIFY row_number() OVER (PARTITION BY asset, partition_key ORDER BY version DESC) = 1"
)


def _heads_params(branch: str) -> dict[str, Any]:
    return {"branch": branch, "in_branch": list(IN_BRANCH), "outside": OUTSIDE_WINDOW}


def branch_heads(con: duckdb.DuckDBPyConnection, branch: str) -> dict[str, dict[str, tuple[int, str, int | None]]]:
    """asset -> partition -> (version, status, base version) of the branch's newest version of each partition."""
    rows = con.execute(
        f"SELECT asset, partition_key, version, status, base_version FROM ({_BRANCH_HEADS})", _heads_params(branch)
    ).fetchall()
    heads: dict[str, dict[str, tuple[int, str, int | None]]] = {}
    for asset, key, version, status, base in rows:
        heads.setdefault(asset, {})[key] = (version, status, base)
    return heads


def branch_staged_at(con: duckdb.DuckDBPyConnection, branch: str) -> dt.datetime | None:
    """When the branch's newest version was staged (an approval older than that did not see it)."""
    return con.execute("SELECT max(created_at) FROM bfa.versions WHERE branch = ?", [branch]).fetchone()[0]


def branch_published(con: duckdb.DuckDBPyConnection, branch: str) -> dict[str, dict[str, tuple[int, bool]]]:
    """asset -> partition -> (version, still published) of every version the branch published."""
    rows = con.execute(
        "SELECT v.asset, v.partition_key, v.version, p.version IS NOT NULL FROM bfa.versions v "
        "LEFT JOIN bfa.published p ON p.version = v.version "
        "WHERE v.branch = ? AND v.version IN (SELECT to_version FROM bfa.pointer_history h JOIN bfa.ledger l "
        "USING (entry_id) WHERE l.action = 'publish' AND (l.params ->> 'branch') = ?)",
        [branch, branch],
    ).fetchall()
    out: dict[str, dict[str, tuple[int, bool]]] = {}
    for asset, key, version, current in rows:
        out.setdefault(asset, {})[key] = (version, bool(current))
    return out


def branch_versions(con: duckdb.DuckDBPyConnection, branch: str, asset: str | None = None) -> list[int]:
    """Every version of the branch (of `asset`) whose rows are kept."""
    rows = con.execute(
        "SELECT version FROM bfa.versions WHERE branch = ? AND (? IS NULL OR asset = ?) "
        "AND status IN (SELECT unnest(?)) ORDER BY version",
        [branch, asset, asset, list(IN_BRANCH)],
    ).fetchall()
    return [r[0] for r in rows]


def stage_in_branch(con: duckdb.DuckDBPyConnection, asset: str, versions: Mapping[str, int], branch: str) -> None:
    """Tie a run's versions to `branch`, each with the version published for its partition now (its base)."""
    published = {k: v for k, (v, _, _) in published_partitions(con, asset).items()}
    keys = list(versions)
    con.execute(
        "UPDATE bfa.versions SET branch = $1, base_version = b.base FROM (SELECT unnest($2::BIGINT[]) AS version, "
        "unnest($3::BIGINT[]) AS base) b WHERE bfa.versions.version = b.version",  # numbered: see record_stats
        [branch, [versions[k] for k in keys], [published.get(k) for k in keys]],
    )


# What a run in the branch reads of each partition: the branch's newest passing version, else the published one
# (as warehouse.branch_overlay shows the tables to the run).
_BRANCH_SEEN = f"""heads AS ({_BRANCH_HEADS}), seen AS (
    SELECT asset, partition_key, version FROM heads WHERE status = 'branched' UNION ALL
    SELECT asset, partition_key, version FROM bfa.published p WHERE NOT EXISTS (
        SELECT 1 FROM heads h WHERE h.status = 'branched' AND h.asset = p.asset AND h.partition_key = p.partition_key
    )
)"""


def record_reads(
    con: duckdb.DuckDBPyConnection, branch: str, versions: Mapping[str, int], needs: Mapping[str, Sequence[Any]]
) -> None:
    """Keep with each of a branch run's `versions` (partition -> version) the upstream versions it read
    (`needs`: partition -> :class:`planning.Need`), so its publish can tell when one has changed since."""
    pairs = [(versions[k], n.asset, n.key) for k, ns in needs.items() if k in versions for n in ns]
    if not pairs:
        return
    con.execute(
        f"UPDATE bfa.versions SET reads = x.reads FROM (WITH {_BRANCH_SEEN}, r AS (SELECT unnest($v::BIGINT[]) AS "
        "version, unnest($a::VARCHAR[]) AS asset, unnest($k::VARCHAR[]) AS partition_key) SELECT r.version, "
        "list({'asset': r.asset, 'partition_key': r.partition_key, 'version': s.version}) AS reads FROM r "
        "LEFT JOIN seen s USING (asset, partition_key) GROUP BY r.version) x WHERE bfa.versions.version = x.version",
        {"v": [p[0] for p in pairs], "a": [p[1] for p in pairs], "k": [p[2] for p in pairs], **_heads_params(branch)},
    )


def stale_reads(con: duckdb.DuckDBPyConnection, branch: str) -> dict[str, list[tuple[str, str]]]:
    """asset -> (partition, "upstream partition") of the branch's versions that read an upstream version which is
    no longer the one the branch would publish with (published anew meanwhile, or re-run in the branch)."""
    rows = con.execute(
        f"WITH {_BRANCH_SEEN} SELECT x.asset, x.partition_key, x.r.asset, x.r.partition_key FROM "
        "(SELECT asset, partition_key, unnest(reads) AS r FROM heads) x LEFT JOIN seen s "
        "ON s.asset = x.r.asset AND s.partition_key = x.r.partition_key WHERE s.version IS DISTINCT FROM x.r.version "
        "ORDER BY ALL",
        _heads_params(branch),
    ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for asset, key, upstream, upstream_key in rows:
        out.setdefault(asset, []).append((key, input_label(upstream, upstream_key)))
    return out


def approve_branch(con: duckdb.DuckDBPyConnection, branch: str, by: str, reason: str) -> None:
    con.execute(
        "UPDATE bfa.branches SET approved_by = ?, approved_reason = ?, approved_at = ? WHERE branch = ?",
        [by, reason, now(), branch],
    )


def close_branch(con: duckdb.DuckDBPyConnection, branch: str, state: str, by: str | None) -> None:
    con.execute(
        "UPDATE bfa.branches SET state = ?, decided_by = ?, decided_at = ? WHERE branch = ?",
        [state, by or getpass.getuser(), now(), branch],
    )


def branch_entries(con: duckdb.DuckDBPyConnection, branch: str) -> dict[str, list[dict[str, Any]]]:
    """asset -> the ledger entries (checks, seconds of transform, audit and the profile scan within it, metrics
    before/after per partition) of the runs that wrote the branch's current versions."""
    heads = [v for parts in branch_heads(con, branch).values() for v, _, _ in parts.values()]
    rows = con.execute(
        f"SELECT asset, checks, metrics, params->'$.{TIMINGS}' FROM bfa.ledger "
        "WHERE action IN ('branch', 'hold') AND list_has_any(versions, ?::BIGINT[]) ORDER BY entry_id",
        [heads],
    ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for asset, checks, metrics, timings in rows:
        seconds = {k: float(v or 0) for k, v in json.loads(timings or "{}").items()}  # transform, audit, profile
        out.setdefault(asset, []).append(
            {"checks": checks_of(checks), "metrics": json.loads(metrics or "{}"), "seconds": seconds}
        )
    return out
