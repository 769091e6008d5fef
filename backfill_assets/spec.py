"""Declarative description of a derived table: the contract every backfill is audited against."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from . import partitions as schemes
from . import sqltext

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


WRITE_STRATEGIES = ("partition_overwrite", "merge_by_key", "parallel_version")
MISSING_KEY_POLICIES = ("keep", "delete")
RESERVED_NAMES = {  # bfa.<name> catalog objects
    "versions", "published", "ledger", "pointer_history", "version_seq", "ledger_seq", "pointer_seq"
}  # fmt: skip
INCOMPLETE_INPUTS = ("refuse", "provisional")


class SpecError(ValueError):
    """A table spec that cannot work; the message names the table and the fix."""


def quote_ident(name: str) -> str:
    """Validate an SQL identifier and return it double-quoted; refuses anything else."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise SpecError(f"{name!r} is not a valid identifier: use letters, digits and _, not starting with a digit")
    return f'"{name}"'


@dataclass(frozen=True)
class Pattern:
    """A regular expression (RE2, matched anywhere in the value) for :attr:`TableSpec.personal_data`, and
    `needs`: text every match contains. Values without it skip the regular expression: on long text
    columns that is most of the check's cost (measured: 5x cheaper on the reference tables)."""

    regex: str
    needs: str = ""


# A value containing an e-mail address: a handy entry for TableSpec.personal_data.
EMAIL = Pattern(r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", needs="@")


@dataclass(frozen=True)
class Column:
    """A column of the table: its DuckDB type, meaning, and what values are acceptable.

    `checks` are pandera checks (e.g. ``pa.Check.ge(0)``), validated on a bounded sample of each
    candidate. `nullable=False` is enforced on every row, in the database.
    """

    type: str
    description: str = ""
    nullable: bool = True
    max_null_rate: float | None = None
    checks: Sequence[Any] = ()


@dataclass(frozen=True)
class Consumer:
    """Something people read that depends on the table: a dashboard, an export, a report."""

    name: str
    kind: str = "dashboard"
    owners: Sequence[str] = ()
    url: str = ""

    @property
    def key(self) -> dg.AssetKey:
        slug = re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")
        return dg.AssetKey(["consumers", slug])


@dataclass(frozen=True)
class Reconcile:
    """The table's `metric` must equal, per partition, the value computed by `expected_sql`.

    `expected_sql` returns the partition columns, then the value, one row per partition: ``(partition_date,
    value)`` for a time window, ``(region, value)`` for static partitions, ``(day, region, value)`` for date x
    region. It may use the bound parameters ``$start`` and ``$end`` (end exclusive; dates or timestamps, as the
    partition column holds them) and ``$keys`` (the static keys). A long run evaluates it
    once per slice of ``partitions_per_write`` partitions, so a partition's value must not depend on which
    window holds it. A partition passes when ``|actual - expected| <= abs_tol`` or ``<= rel_tol * |expected|``.
    To compare with an upstream table's own metric without rescanning its rows, select from
    ``bfa.published_metric('<upstream>', '<metric>', $start, $end)``: its published partitions' values as
    recorded when their versions were audited.
    """

    name: str
    metric: str
    expected_sql: str
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "expected_sql", _one_statement(self.expected_sql, f"rule {self.name!r}"))


@dataclass(frozen=True)
class Invariant:
    """A rule stated as a query returning the rows that break it; no rows means it holds.

    The rows being audited are readable as the relation ``candidate``; ``$start`` and ``$end``
    are bound to the window.
    """

    name: str
    violations_sql: str
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "violations_sql", _one_statement(self.violations_sql, f"rule {self.name!r}"))


def _one_statement(sql: str, where: str) -> str:
    """Spec SQL as one statement that wraps safely (trailing comments and ``;`` removed), or a SpecError."""
    try:
        return sqltext.statement(sql, where)
    except ValueError as e:
        raise SpecError(str(e)) from None


@dataclass(frozen=True)
class TableSpec:
    """A partitioned, versioned derived table.

    `partitions` is a time-window, static or dynamic definition, or a multi-partition definition of a time
    dimension and a static one (e.g. date x region). The `partition_column` holds each row's partition: for
    a time window its start, a DATE for partitions that start at midnight (the day, the week's first day, the
    month's first day), a TIMESTAMPTZ for any time window (hourly, an hour offset), or a TIMESTAMP for a
    definition in UTC; for static partitions the key. For a multi-partition definition it maps each dimension
    to its column (see :mod:`backfill_assets.partitions`).
    """

    name: str
    partitions: dg.PartitionsDefinition
    partition_column: str | Mapping[str, str]
    grain: Sequence[str]
    columns: dict[str, Column]
    code_version: str
    description: str = ""
    metrics: dict[str, str] = field(default_factory=dict)
    rules: Sequence[Reconcile | Invariant] = ()
    consumers: Sequence[Consumer] = ()
    owners: Sequence[str] = ()
    group: str | None = None
    sparse: bool = False
    max_row_change: float = 0.5
    partitions_per_run: int | None = None  # None: the whole range in one run
    # A run stages at most this many partitions per SQL statement (the transform runs once per such slice of
    # its range): memory stays bounded however long the range (measured: 365 days in one statement ran out of
    # memory at 1500MB; in slices of 31, 12% faster too). The transform must return only its window's rows.
    # Reconcile rules are evaluated in the same slices.
    partitions_per_write: int = 31
    # partition_overwrite: a run's rows replace its partitions. merge_by_key: they upsert on the grain and
    # `missing_keys` says what happens to published keys the run did not produce ("keep" or "delete").
    # parallel_version: a passing run is kept as a candidate (readable as <name>__candidate) until cutover.
    write_strategy: str = "partition_overwrite"
    missing_keys: str | None = None
    keep_versions: int = 3  # retention: versions kept per partition (the published one included) ...
    keep_days: int = 30  # ... and any version younger than this; vacuum removes what is beyond both
    tags: dict[str, str] = field(default_factory=dict)
    # Personal data that must never reach this table: label -> regular expression (RE2, matched anywhere in
    # the value) or Pattern, checked on every row of every text column by the blocking check `no_personal_data`.
    personal_data: dict[str, str | Pattern] = field(default_factory=dict)
    # A partition runs only when every upstream partition its partition mappings read is published (the
    # blocking gate `inputs_complete`). "provisional": a partition may publish while inputs from after its own
    # window are missing (late data not in yet, e.g. today's partition of a table that reads D..D+3); such a
    # version is marked provisional and `plan --stale` lists it once those inputs are published.
    incomplete_inputs: str = "refuse"

    def __post_init__(self) -> None:
        where = f"table spec {self.name!r}"
        quote_ident(self.name)
        if self.name.lower() in RESERVED_NAMES or self.name.endswith("__candidate"):
            raise SpecError(f"{where}: {self.name!r} is reserved for the warehouse catalog; choose another name")
        column = self.partition_column
        named = column.values() if isinstance(column, Mapping) else [column]
        for col in (*named, *self.grain, *self.columns):
            try:
                quote_ident(col)
            except SpecError as e:
                raise SpecError(f"{where}: {e}") from None
        declared = {name: col.type for name, col in self.columns.items()}
        try:
            scheme = schemes.Scheme.of(self.partitions, self.partition_column, declared, where)
        except ValueError as e:
            raise SpecError(str(e)) from None
        object.__setattr__(self, "scheme", scheme)
        if self.incomplete_inputs not in INCOMPLETE_INPUTS:
            raise SpecError(f"{where}: incomplete_inputs must be 'refuse' or 'provisional'")
        if not self.grain:
            raise SpecError(f"{where}: declare the grain, the columns that identify one row")
        if self.columns:
            missing = [c for c in (*scheme.columns, *self.grain) if c not in self.columns]
            if missing:
                raise SpecError(f"{where}: grain/partition columns {missing} are not among the declared columns")
        for rule in self.rules:
            if isinstance(rule, Reconcile) and rule.metric not in self.metrics:
                raise SpecError(
                    f"{where}: rule {rule.name!r} reconciles unknown metric {rule.metric!r}; declare it in metrics"
                )
        if not self.max_row_change >= 0:
            raise SpecError(f"{where}: max_row_change must be >= 0")
        if self.partitions_per_run is not None and self.partitions_per_run < 1:
            raise SpecError(f"{where}: partitions_per_run must be at least 1")
        if self.partitions_per_write < 1:
            raise SpecError(f"{where}: partitions_per_write must be at least 1")
        if self.write_strategy not in WRITE_STRATEGIES:
            raise SpecError(f"{where}: write_strategy must be one of {', '.join(WRITE_STRATEGIES)}")
        if (self.write_strategy == "merge_by_key") != (self.missing_keys is not None):
            raise SpecError(f"{where}: merge_by_key needs missing_keys ('keep' or 'delete'), other strategies none")
        if self.missing_keys is not None and self.missing_keys not in MISSING_KEY_POLICIES:
            raise SpecError(f"{where}: missing_keys must be 'keep' or 'delete'")
        if self.keep_versions < 1 or self.keep_days < 0:
            raise SpecError(f"{where}: keep_versions must be >= 1 and keep_days >= 0")
        for label, pattern in self.personal_data.items():
            regex = pattern.regex if isinstance(pattern, Pattern) else pattern
            try:
                re.compile(regex)
            except (re.error, TypeError) as e:
                raise SpecError(f"{where}: personal_data {label!r} is not a regular expression: {e}") from None
        if len({r.name for r in self.rules}) != len(self.rules):
            raise SpecError(f"{where}: rule names must be unique")

    scheme: schemes.Scheme = field(init=False, repr=False, compare=False)

    @property
    def partition_columns(self) -> list[str]:
        """The columns that hold a row's partition, the time dimension's first."""
        return self.scheme.columns

    @property
    def backfill_policy(self) -> dg.BackfillPolicy:
        if self.partitions_per_run is None:
            return dg.BackfillPolicy.single_run()
        return dg.BackfillPolicy.multi_run(self.partitions_per_run)

    @property
    def key(self) -> dg.AssetKey:
        return dg.AssetKey(self.name)
