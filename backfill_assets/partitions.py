"""Partition schemes: the one place that knows what a partition is.

A :class:`Scheme` turns a partition key into the value its rows carry in the partition column(s), and the
parameters a transform is bound for a set of keys; the rest of the library joins rows to partitions by that
value and never parses a key. Definitions it understands:

- a time window (hourly, daily, weekly, monthly, any cron, with ``timezone`` and offsets). The column holds
  the window's start: a ``DATE`` for windows that start at midnight in the definition's time zone, bound as the
  local dates; a ``TIMESTAMPTZ`` for any window, bound as instants in the definition's time zone, so daylight
  saving time and offsets are exact; a ``TIMESTAMP`` (no time zone) for a definition in UTC, bound as UTC
  wall-clock times. A transform gets ``$start`` and ``$end`` (end exclusive);
- static partitions (regions, tenants) and dynamic ones: the column equals the key (compared as text). A
  transform gets ``$keys``, the run's keys;
- a multi-partition definition of one time dimension and one static (or dynamic) one, e.g. date x region: a
  column per dimension, and ``$start``, ``$end`` and ``$keys`` (the static dimension's keys).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

DATE, TIMESTAMP, TIMESTAMPTZ = "DATE", "TIMESTAMP", "TIMESTAMPTZ"
_ALIASES = {"DATE": DATE, "TIMESTAMP": TIMESTAMP, "DATETIME": TIMESTAMP, "TIMESTAMPTZ": TIMESTAMPTZ}
_ALIASES["TIMESTAMP WITH TIME ZONE"] = TIMESTAMPTZ
TEXT = ("VARCHAR", "TEXT", "STRING")

Bound = dt.date | dt.datetime
_KEYED = (dg.StaticPartitionsDefinition, dg.DynamicPartitionsDefinition)


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


def bound(moment: dt.datetime, kind: str) -> Bound:
    """A window edge (aware, in the definition's time zone) as the value bound for a `kind` column."""
    if kind == DATE:
        return moment.date()
    if kind == TIMESTAMP:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def _quote(name: str) -> str:
    return f'"{name}"'  # names are validated identifiers (spec.quote_ident checks them before a Scheme is built)


@dataclass(frozen=True)
class Scheme:
    """A table's partitions: its Dagster definition, and the column its rows carry each dimension in.

    `time` and `static` are (dimension name, column) of the time and the keyed dimension; the name is None
    for a definition of one dimension. `time_kind` is how the time column holds a window's start (DATE,
    TIMESTAMP or TIMESTAMPTZ); `cast_static`: the static column is not text, so rows are compared as text.
    """

    definition: dg.PartitionsDefinition
    time: tuple[str | None, str] | None
    static: tuple[str | None, str] | None
    time_kind: str | None = None
    cast_static: bool = False
    # time key -> window: Dagster's lookup costs ~80 us, and a run asks for each key's several times
    _windows: dict[str, tuple[Bound, Bound]] = field(default_factory=dict, init=False, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        definition: dg.PartitionsDefinition,
        columns: str | Mapping[str, str],
        declared: Mapping[str, str | None],
        where: str,
    ) -> Scheme:
        """The scheme of `definition` with its rows' partition `columns` (a column; for a multi-partition
        definition, dimension -> column) and the `declared` column types; a ValueError of one line names
        what is not supported."""
        if isinstance(definition, dg.MultiPartitionsDefinition):
            dims = {d.name: d.partitions_def for d in definition.partitions_defs}
            times = [n for n, d in dims.items() if isinstance(d, dg.TimeWindowPartitionsDefinition)]
            keyed = [n for n, d in dims.items() if isinstance(d, _KEYED)]
            if len(times) != 1 or len(keyed) != 1:
                kinds = ", ".join(f"{n}: {type(d).__name__}" for n, d in dims.items())
                raise ValueError(
                    f"{where}: a multi-partition definition must have one time dimension and one static (or "
                    f"dynamic) one, not {kinds}"
                )
            if not isinstance(columns, Mapping) or set(columns) != set(dims):
                raise ValueError(
                    f"{where}: partition_column must map each dimension ({', '.join(sorted(dims))}) to its column"
                )
            t, s = times[0], keyed[0]
            kind = column_type(dims[t], declared.get(columns[t]), where)
            return cls(definition, (t, columns[t]), (s, columns[s]), kind, _not_text(declared.get(columns[s])))
        if not isinstance(columns, str):
            raise ValueError(f"{where}: partition_column is one column for a definition of one dimension")
        if isinstance(definition, dg.TimeWindowPartitionsDefinition):
            return cls(definition, (None, columns), None, column_type(definition, declared.get(columns), where))
        if isinstance(definition, _KEYED):
            return cls(definition, None, (None, columns), cast_static=_not_text(declared.get(columns)))
        raise ValueError(
            f"{where}: partitions must be a time window (hourly, daily, weekly, monthly, a cron), static, dynamic, "
            f"or time x static; {type(definition).__name__} is not supported"
        )

    @property
    def columns(self) -> list[str]:
        """The partition columns, the time dimension's first."""
        return [d[1] for d in (self.time, self.static) if d]

    @property
    def time_definition(self) -> dg.TimeWindowPartitionsDefinition | None:
        return self._dimension(self.time) if self.time else None

    def _dimension(self, dim: tuple[str | None, str]) -> Any:
        name = dim[0]
        if name is None:
            return self.definition
        return next(d.partitions_def for d in self.definition.partitions_defs if d.name == name)

    def split(self, key: str) -> tuple[str | None, str | None]:
        """(time key, static key) of a partition key."""
        if not isinstance(self.definition, dg.MultiPartitionsDefinition):
            return (key, None) if self.time else (None, key)
        parts = self.definition.get_partition_key_from_str(key).keys_by_dimension
        return parts[self.time[0]], parts[self.static[0]]

    def window(self, time_key: str) -> tuple[Bound, Bound]:
        """(start, end exclusive) of a time key, as the time column holds them."""
        if (known := self._windows.get(time_key)) is not None:
            return known
        w = self.time_definition.time_window_for_partition_key(time_key)
        self._windows[time_key] = bound(w.start, self.time_kind), bound(w.end, self.time_kind)
        return self._windows[time_key]

    def value(self, key: str) -> Any:
        """What the rows of partition `key` carry: the window's start, the static key, or both as a dict (the
        struct :meth:`expr` builds)."""
        t, s = self.split(key)
        start = self.window(t)[0] if t is not None else None
        if self.time and self.static:
            return {"t": start, "s": s}
        return start if self.time else s

    def expr(self, alias: str = "") -> str:
        """SQL of a row's partition value (see :meth:`value`); `alias` qualifies the columns (``"s."``)."""
        parts = []
        if self.time:
            parts.append(alias + _quote(self.time[1]))
        if self.static:
            col = alias + _quote(self.static[1])
            parts.append(f"CAST({col} AS VARCHAR)" if self.cast_static else col)
        return f"struct_pack(t := {parts[0]}, s := {parts[1]})" if len(parts) == 2 else parts[0]

    def row_value(self, *columns: Any) -> Hashable:
        """The value of a row whose partition columns hold `columns` (time first), as :func:`hashable` makes a
        :meth:`value` comparable."""
        return hashable({"t": columns[0], "s": columns[1]} if len(columns) == 2 else columns[0])

    def sort(self, keys: Sequence[str]) -> list[str]:
        """`keys` by static key, then time."""
        def order(key: str) -> tuple:
            t, s = self.split(key)
            return (s or "", self.window(t)[0] if t is not None else 0)

        return sorted(keys, key=order)

    def slices(self, keys: Sequence[str], per_write: int) -> list[list[str]]:
        """`keys` in groups of at most `per_write` that one statement writes: each holds one static key's
        consecutive windows (or static keys alone), so its parameters bound exactly its partitions when the run
        covers whole ranges."""
        out: list[list[str]] = []
        for key in self.sort(keys):
            static = self.split(key)[1] if self.time else None  # without time, static keys share slices
            if out and len(out[-1]) < per_write and (self.split(out[-1][0])[1] if self.time else None) == static:
                out[-1].append(key)
            else:
                out.append([key])
        return out

    def params(self, keys: Sequence[str]) -> dict[str, Any]:
        """What a transform is bound for `keys`: ``start`` and ``end`` (exclusive) of their span in time, and
        ``keys``, their static keys."""
        out: dict[str, Any] = {}
        split = [self.split(k) for k in keys]
        if self.time:
            windows = [self.window(t) for t, _ in split]
            out.update(start=min(w[0] for w in windows), end=max(w[1] for w in windows))
        if self.static:
            out["keys"] = sorted({s for _, s in split})
        return out


def hashable(value: Any) -> Hashable:
    """A partition value as a dict key (a struct comes back from DuckDB as a dict)."""
    return tuple(value.values()) if isinstance(value, dict) else value


def _not_text(declared: str | None) -> bool:
    return declared is not None and declared.strip().upper() not in TEXT
