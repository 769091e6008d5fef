"""A derived table declared in YAML: a Dagster Component (``type: backfill_assets.DerivedTable`` in a
``defs.yaml``) that builds the same asset as :func:`derived_asset` with a SQL transform.

``dg check yaml`` validates a ``defs.yaml`` against this model's fields (an unknown or mistyped field is named);
``dg check defs`` then builds the :class:`TableSpec`, whose own checks name the table and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
import pandera.pandas as pa
import yaml
from pydantic import Field

from .factory import consumer_specs, derived_asset
from .spec import Column, Consumer, Invariant, Reconcile, SpecError, TableSpec

TYPE_NAMES = ("backfill_assets.DerivedTable", "backfill_assets.component.DerivedTable")

SCHEDULES = {
    "hourly": dg.HourlyPartitionsDefinition,
    "daily": dg.DailyPartitionsDefinition,
    "weekly": dg.WeeklyPartitionsDefinition,
    "monthly": dg.MonthlyPartitionsDefinition,
}


class Partitions(dg.Model, dg.Resolvable):
    """``{schedule: daily, start: "2025-01-01"}``; `end` (exclusive) and `timezone` are optional."""

    schedule: Literal["hourly", "daily", "weekly", "monthly"]
    start: str = Field(description="first partition, e.g. 2025-01-01 (2025-01-01-00:00 for hourly)")
    end: str | None = Field(default=None, description="end of the last partition (exclusive); none: up to today")
    timezone: str | None = None
    day_offset: int | None = Field(default=None, description="weekly: first weekday (0 Sunday, 1 Monday); monthly: day")

    def definition(self) -> dg.TimeWindowPartitionsDefinition:
        extra = {"timezone": self.timezone} if self.timezone else {}
        if self.day_offset is not None:
            extra["day_offset"] = self.day_offset
        return SCHEDULES[self.schedule](start_date=self.start, end_date=self.end, **extra)


class ColumnModel(dg.Model, dg.Resolvable):
    """A :class:`Column`; `ge`, `le` and `isin` are its pandera checks (value at least, at most, one of)."""

    type: str = Field(description="a DuckDB type, e.g. DECIMAL(18,2)")
    description: str = ""
    nullable: bool = True
    max_null_rate: float | None = None
    ge: float | None = None
    le: float | None = None
    isin: list[str] | None = None

    def column(self) -> Column:
        bounds = {"ge": pa.Check.ge, "le": pa.Check.le, "isin": pa.Check.isin}
        checks = [make(getattr(self, name)) for name, make in bounds.items() if getattr(self, name) is not None]
        return Column(self.type, self.description, self.nullable, self.max_null_rate, checks)


class Dep(dg.Model, dg.Resolvable):
    """An upstream asset. With offsets, each partition reads the upstream partitions from `start_offset` to
    `end_offset` around its own (``end_offset: 2``: the same day and the two after it)."""

    asset: str
    start_offset: int | None = None
    end_offset: int | None = None

    def dependency(self) -> dg.AssetDep:
        key = dg.AssetKey.from_user_string(self.asset)
        if self.start_offset is None and self.end_offset is None:
            return dg.AssetDep(key)
        mapping = dg.TimeWindowPartitionMapping(start_offset=self.start_offset or 0, end_offset=self.end_offset or 0)
        return dg.AssetDep(key, partition_mapping=mapping)


class ReconcileRule(dg.Model, dg.Resolvable):
    """:class:`Reconcile`: `metric` must equal, per partition, what `expected_sql` returns."""

    name: str
    metric: str
    expected_sql: str
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    description: str = ""


class InvariantRule(dg.Model, dg.Resolvable):
    """:class:`Invariant`: `violations_sql` returns the rows that break the rule."""

    name: str
    violations_sql: str
    description: str = ""


class ConsumerModel(dg.Model, dg.Resolvable):
    name: str
    kind: str = "dashboard"
    owners: list[str] = []
    url: str = ""


class DerivedTable(dg.Component, dg.Model, dg.Resolvable):
    """A partitioned, versioned, write-audit-publish table whose transform is SQL (``$start``/``$end`` bound to
    the window, end exclusive). The fields are :class:`TableSpec`'s (its `rules` are `reconcile` and `invariants`
    here); `deps` are the upstream assets it reads."""

    name: str
    partitions: Partitions
    partition_column: str
    grain: list[str]
    code_version: str | int = Field(description="bump it when the SQL changes what it computes")
    sql: str = Field(description="the transform: one SELECT returning the rows of every partition in $start..$end")
    columns: dict[str, ColumnModel] = Field(default_factory=dict, description="name: {type: ..., nullable: ...}")
    deps: list[Dep] = []
    description: str = ""
    metrics: dict[str, str] = {}
    reconcile: list[ReconcileRule] = Field(default_factory=list, description="Reconcile rules")
    invariants: list[InvariantRule] = Field(default_factory=list, description="Invariant rules")
    consumers: list[ConsumerModel] = []
    owners: list[str] = []
    group: str | None = None
    sparse: bool = False
    max_row_change: float = 0.5
    partitions_per_run: int | None = None
    write_strategy: Literal["partition_overwrite", "merge_by_key", "parallel_version"] = "partition_overwrite"
    missing_keys: Literal["keep", "delete"] | None = None
    incomplete_inputs: Literal["refuse", "provisional"] = "refuse"
    keep_versions: int = 3
    keep_days: int = 30
    tags: dict[str, str] = {}
    personal_data: dict[str, str] = Field(
        default_factory=dict, description="label: regular expression that must match no value of a text column"
    )

    def spec(self) -> TableSpec:
        columns = {name: c.column() for name, c in self.columns.items()}
        rules = [Reconcile(**r.model_dump()) for r in self.reconcile]
        rules += [Invariant(**r.model_dump()) for r in self.invariants]
        nested = {"partitions", "columns", "reconcile", "invariants", "consumers", "deps", "sql", "code_version"}
        return TableSpec(
            **self.model_dump(exclude=nested),
            partitions=self.partitions.definition(),
            columns=columns,
            rules=rules,
            consumers=[Consumer(**c.model_dump()) for c in self.consumers],
            code_version=str(self.code_version),
        )

    def asset(self) -> dg.AssetsDefinition:
        return derived_asset(self.spec(), self.sql, deps=[d.dependency() for d in self.deps])

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return dg.Definitions(assets=[self.asset(), *consumer_specs([self.spec()])])

    @classmethod
    def from_defs_yaml(cls, path: str | Path) -> DerivedTable:
        """The component a ``defs.yaml`` declares (its ``type`` must be this class), resolved as Dagster resolves
        it; for Python code that builds its Definitions itself and wants one table in YAML."""
        document = yaml.safe_load(Path(path).read_text())
        if document.get("type") not in TYPE_NAMES:
            raise SpecError(f"{path}: type must be backfill_assets.DerivedTable, not {document.get('type')!r}")
        return cls.resolve_from_yaml(yaml.safe_dump(document.get("attributes") or {}, sort_keys=False))
