"""The Dagster resource that opens the warehouse, and :func:`connect` for scripts and the CLI."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from . import catalog

DEFAULT_DB_PATH = "data/warehouse.duckdb"

__all__ = ["DEFAULT_DB_PATH", "Warehouse", "WarehouseError", "WarehouseLockTimeout", "connect"]


class WarehouseError(RuntimeError):
    """The DuckDB file cannot be opened; the message names the file and the fix."""


class WarehouseLockTimeout(WarehouseError):
    """Another process held the DuckDB file for longer than the configured timeout."""


class Warehouse(DuckDBResource):
    """The DuckDB file derived tables live in.

    Extends dagster-duckdb's resource: waits (and says so in the log) while another process holds
    the file's single write lock, fails clearly past `lock_timeout_s`, and always closes its
    connection, also when the step fails.
    """

    database: str = Field(
        default_factory=lambda: os.environ.get("BACKFILL_ASSETS_DB", DEFAULT_DB_PATH),
        description="Path of the DuckDB file; defaults to $BACKFILL_ASSETS_DB, else data/warehouse.duckdb.",
    )
    lock_timeout_s: float = Field(
        default_factory=lambda: float(os.environ.get("BACKFILL_ASSETS_LOCK_TIMEOUT_S", "600")),
        description="Seconds to wait for another process (a notebook, another run) to release the DuckDB "
        "file before failing; defaults to $BACKFILL_ASSETS_LOCK_TIMEOUT_S, else 600.",
    )
    memory_limit: str | None = Field(
        default_factory=lambda: os.environ.get("BACKFILL_ASSETS_MEMORY_LIMIT") or None,
        description="DuckDB's memory_limit for runs, e.g. '2GB' (larger steps spill to disk); defaults to "
        "$BACKFILL_ASSETS_MEMORY_LIMIT, else DuckDB's own default of 80% of RAM.",
    )

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        config = {**self.connection_config, **({"memory_limit": self.memory_limit} if self.memory_limit else {})}
        con = connect(self.database, config, self.lock_timeout_s)
        try:
            yield con
        finally:
            con.close()


def connect(
    path: str, config: dict[str, Any] | None = None, lock_timeout_s: float = 600.0, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting for another writer to let go of the file.

    Rows are written without preserving insertion order (`config` may say otherwise): SQL never promised an
    order, and keeping it buffers large inserts in memory (DuckDB's advice for out-of-memory errors)."""
    config = {"preserve_insertion_order": False, **(config or {})}
    if path != ":memory:" and not read_only:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    next_note = 0.0
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only, config=config)
            break
        except duckdb.IOException as e:
            if "newer version of DuckDB" in str(e):
                raise WarehouseError(
                    f"DuckDB file {path} was written by a newer DuckDB than this release's {duckdb.__version__}, "
                    "which cannot read it; nothing was changed. Keep using the release that wrote it, or build "
                    "the warehouse again (the demo's: make clean dev)."
                ) from None
            if "lock" not in str(e).lower():  # read-only or missing file, a directory, no space ...
                raise WarehouseError(
                    f"cannot open DuckDB file {path}{'' if read_only else ' for writing'}: {e}; check the path "
                    "and its permissions ($BACKFILL_ASSETS_DB). Nothing was changed."
                ) from None
            now = time.monotonic()
            if now >= deadline:
                raise WarehouseLockTimeout(
                    f"DuckDB file {path} stayed locked by another process for {lock_timeout_s:.0f}s; "
                    "close the other connection (a notebook or shell?) and retry. Nothing was changed."
                ) from None
            if now >= next_note:
                dg.get_dagster_logger().warning(f"Waiting for the DuckDB write lock on {path}: {e}")
                next_note = now + 10
            time.sleep(0.2)
    if not read_only:
        catalog.ensure(con)
    return con
