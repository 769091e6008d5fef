"""Partition schemes: the one place that knows what a partition is.

A partition key becomes the window of rows it owns, as the values bound to ``$start`` and ``$end`` (end
exclusive) and the value its rows carry in the partition column (the window's start). Time windows only, for
now (static and multi-dimensional partitions come later, here):

- ``DATE`` partition column: windows that start at midnight in the definition's time zone (daily, weekly,
  monthly; any ``timezone``); bound as the local dates.
- ``TIMESTAMPTZ``: any time window (hourly, an ``hour_offset``, any cron), bound as instants in the
  definition's time zone, so daylight saving time and offsets are exact.
- ``TIMESTAMP`` (no time zone): any time window of a definition in UTC, bound as UTC wall-clock times.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import dagster as dg

DATE, TIMESTAMP, TIMESTAMPTZ = "DATE", "TIMESTAMP", "TIMESTAMPTZ"
_ALIASES = {"DATE": DATE, "TIMESTAMP": TIMESTAMP, "DATETIME": TIMESTAMP, "TIMESTAMPTZ": TIMESTAMPTZ}
_ALIASES["TIMESTAMP WITH TIME ZONE"] = TIMESTAMPTZ

Bound = dt.date | dt.datetime
Window = tuple[str, Bound, Bound]  # a partition's key, start and end (exclusive), as bound in SQL


def _utc(pdef: dg.TimeWindowPartitionsDefinition) -> bool:
    return (pdef.timezone or "UTC").upper() in ("UTC", "ETC/UTC", "GMT", "ETC/GMT")


def starts_at_midnight(pdef: dg.TimeWindowPartitionsDefinition) -> bool:
    """Whether every window starts at 00:00 local time (so a date names it)."""
    minute, hour, *_ = pdef.cron_schedule.split()
    return minute == "0" and hour == "0"


def column_type(pdef: dg.TimeWindowPartitionsDefinition, declared: str | None, where: str) -> str:
    """The partition column's type for `pdef`: the `declared` one when it can hold the windows' starts, else
    a ValueError naming what to declare; without a declaration, DATE for midnight windows, else TIMESTAMPTZ."""
    if declared is None:
        return DATE if starts_at_midnight(pdef) else TIMESTAMPTZ
    kind = _ALIASES.get(declared.strip().upper())
    if kind is None:
        raise ValueError(f"{where}: the partition column must be DATE, TIMESTAMP or TIMESTAMPTZ, not {declared}")
    if kind == DATE and not starts_at_midnight(pdef):
        raise ValueError(
            f"{where}: partitions on cron {pdef.cron_schedule!r} do not start at midnight, so a DATE cannot hold "
            "a partition's start; declare the partition column TIMESTAMPTZ"
        )
    if kind == TIMESTAMP and not _utc(pdef):
        raise ValueError(
            f"{where}: partitions in time zone {pdef.timezone} need a TIMESTAMPTZ partition column (a TIMESTAMP "
            "without time zone is ambiguous when clocks change); or define the partitions in UTC"
        )
    return kind


def windows(pdef: dg.TimeWindowPartitionsDefinition, kind: str, keys: Sequence[str]) -> list[Window]:
    """(key, start, end exclusive) of each partition, in time order, as bound for a `kind` partition column."""
    out = []
    for key in keys:
        w = pdef.time_window_for_partition_key(key)
        out.append((key, bound(w.start, kind), bound(w.end, kind)))
    return sorted(out, key=lambda x: x[1])


def bound(moment: dt.datetime, kind: str) -> Bound:
    """A window edge (aware, in the definition's time zone) as the value bound for a `kind` column."""
    if kind == DATE:
        return moment.date()
    if kind == TIMESTAMP:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment
