"""The Dagster instance a backfill-assets project runs on: the shipped ``dagster.yaml`` and the one-writer limit
of the ``duckdb`` pool (the limit lives in the instance's storage, so it applies to that pool only)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import dagster as dg

from .factory import POOL

CONFIG = "dagster.yaml"
POOL_LIMIT = 1  # DuckDB has one writer per file


def shipped_config() -> str:
    return resources.files(__package__).joinpath(CONFIG).read_text()


def init(home: str | os.PathLike | None = None) -> list[str]:
    """Set up the Dagster home `home` (default $DAGSTER_HOME): write the shipped dagster.yaml unless one is there
    (an existing one is kept as it is), then set the ``duckdb`` pool's limit. Returns what it did, for people."""
    home = Path(home or os.environ.get("DAGSTER_HOME") or "")
    if not str(home):
        raise ValueError("DAGSTER_HOME is not set: export DAGSTER_HOME=/path/to/a/dagster/home first")
    home.mkdir(parents=True, exist_ok=True)
    config = home / CONFIG
    done = []
    if config.exists():
        done.append(f"kept the existing {config}")
    else:
        config.write_text(shipped_config())
        done.append(f"wrote {config}")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots(POOL, POOL_LIMIT)
    done.append(f"pool {POOL!r}: at most {POOL_LIMIT} step at a time writes the warehouse")
    return done
