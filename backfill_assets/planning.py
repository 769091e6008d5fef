"""Blast radius: which partitions of which assets a backfill changes, and who reads them.

Partition sets are index ranges into a time-window partitions definition, so mapping them through
the lineage graph is a pair of binary searches per edge (the same arithmetic as Dagster's
TimeWindowPartitionMapping, checked against it by property tests), fast enough for thousands of assets.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb

from . import catalog
from .audit import plural
from .partitions import Scheme

Ranges = list[tuple[int, int]]  # sorted, disjoint, half-open [lo, hi) partition index ranges
TABLE_METADATA = "partition_column"  # definition metadata every derived table has (set by derived_asset)
SCHEME_METADATA = "partition_scheme"  # its partition columns and their declared types, to rebuild its Scheme


def scheme_of(node: Any) -> Scheme:
    """The partition scheme of a derived table's asset node, from its definition metadata."""
    meta = getattr(node.metadata[SCHEME_METADATA], "value", node.metadata[SCHEME_METADATA])
    meta = json.loads(meta) if isinstance(meta, str) else meta
    return Scheme.of(node.partitions_def, meta["columns"], meta["types"], node.key.to_user_string())
WHOLE = "whole asset"  # what an unpartitioned asset in a blast radius rebuilds


class PlanError(ValueError):
    """A selection or range that does not resolve; the message names it and the fix."""


@dataclass(frozen=True)
class PartitionIndex:
    """The partitions of a definition as positions, in Dagster's order. For a time-window definition partition
    i spans starts[i]..starts[i+1]; other definitions have no starts."""

    keys: tuple[str, ...]
    starts: tuple[float, ...]  # timestamps; one more than keys: the end of the last partition
    positions: dict[str, int] = field(compare=False, repr=False)
    timezone: str = "UTC"

    def _timestamp(self, day: dt.date) -> float:
        return dt.datetime.combine(day, dt.time(), ZoneInfo(self.timezone)).timestamp()

    def position(self, key: str) -> int:
        return self.positions[key]

    def within(self, start: dt.date, end: dt.date) -> tuple[int, int]:
        """Positions of the partitions whose whole window lies in the days start..end (inclusive), days
        counted in the partitions definition's time zone."""
        lo = self._timestamp(start)
        hi = self._timestamp(end + dt.timedelta(days=1))
        first = bisect.bisect_left(self.starts, lo)
        last = bisect.bisect_right(self.starts, hi) - 1  # partitions ending at or before hi
        return first, max(first, min(last, len(self.keys)))

    def keys_in(self, ranges: Ranges) -> list[str]:
        return [k for lo, hi in ranges for k in self.keys[lo:hi]]

    def ranges_of(self, keys: Iterable[str]) -> Ranges:
        return merge([(i, i + 1) for i in sorted(self.position(k) for k in keys)])


_INDEXES: dict[Any, PartitionIndex] = {}


def partition_index(pdef: dg.PartitionsDefinition) -> PartitionIndex:
    """The index of `pdef`'s partitions that exist now (cached per definition)."""
    if not isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        if isinstance(pdef, dg.DynamicPartitionsDefinition) or (
            isinstance(pdef, dg.MultiPartitionsDefinition)
            and any(isinstance(d.partitions_def, dg.DynamicPartitionsDefinition) for d in pdef.partitions_defs)
        ):
            raise PlanError(f"dynamic partitions ({pdef}) cannot be planned: their keys live in the Dagster instance")
        cache = ("keys", repr(pdef))
        if cache not in _INDEXES:
            keys = tuple(str(k) for k in pdef.get_partition_keys())
            _INDEXES[cache] = PartitionIndex(keys, (), {k: i for i, k in enumerate(keys)})
        return _INDEXES[cache]
    cache_key = (
        pdef.cron_schedule,
        pdef.start,
        pdef.end,
        pdef.timezone,
        pdef.fmt,
        pdef.end_offset,
        tuple(pdef.exclusions or ()),
        dt.date.today(),
    )
    if cache_key not in _INDEXES:
        keys = tuple(pdef.get_partition_keys())
        windows = [pdef.time_window_for_partition_key(k) for k in keys]
        starts = tuple([w.start.timestamp() for w in windows] + ([windows[-1].end.timestamp()] if windows else []))
        _INDEXES[cache_key] = PartitionIndex(keys, starts, {k: i for i, k in enumerate(keys)}, pdef.timezone)
    return _INDEXES[cache_key]


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def map_downstream(
    ranges: Ranges, parent: PartitionIndex, child: PartitionIndex, start_offset: int = 0, end_offset: int = 0
) -> Ranges:
    """Child partitions that read any of the parent's `ranges` through a time-window mapping.

    Child partition d reads the parent's time span [start of d+start_offset, end of d+end_offset);
    it is affected when that span overlaps the parent's changed span.
    """
    n = len(child.keys)
    out = []
    for lo, hi in ranges:
        changed_from, changed_to = parent.starts[lo], parent.starts[hi]
        # first d whose span ends after changed_from; last d whose span starts before changed_to
        first = bisect.bisect_right(child.starts, changed_from) - 1 - end_offset
        last = bisect.bisect_left(child.starts, changed_to) - start_offset  # exclusive
        out.append((max(first, 0), min(last, n)))
    return merge(out)


@dataclass
class Impact:
    """One asset in a blast radius."""

    asset: str
    depth: int  # 0: selected (or stale); n: n edges downstream
    via: str | None  # the parent through which it is reached at that depth
    reason: str
    partition_count: int = 0
    materializable: bool = True
    kinds: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    code_version: str | None = None
    published_code_versions: dict[str, int] = field(default_factory=dict)  # version -> partitions
    rows_published: int | None = None
    estimated_seconds: float | None = None
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (first key, last key) of each range
    reads: list[str] = field(default_factory=list)  # affected parents
    label: str = ""  # a consumer's name
    keys: list[str] = field(default_factory=list, repr=False)  # every partition key
    partitioned: bool = True  # False: an unpartitioned asset, rebuilt whole
    derived: bool = True  # a derived table (its facts are in the warehouse); False: a plain Dagster asset

    @property
    def partitions(self) -> list[str]:
        """Condensed ranges for people, e.g. ``2025-01-01..2025-01-31``; ``whole asset`` for an unpartitioned one."""
        if not self.partitioned:
            return [WHOLE]
        return [a if a == b else f"{a}..{b}" for a, b in self.ranges]


@dataclass
class Plan:
    """A blast radius: every affected asset in dependency order, and the consumers behind them."""

    scope: dict[str, Any]
    impacts: list[Impact]
    # open branches staging partitions of these tables: branch, reviewer, approved_by, asset -> partitions
    branches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tables(self) -> list[Impact]:
        return [i for i in self.impacts if i.materializable]

    @property
    def consumers(self) -> list[Impact]:
        return [i for i in self.impacts if not i.materializable]

    def totals(self) -> dict[str, Any]:
        """The estimate covers the derived tables (the ledger knows their pace), not plain Dagster assets."""
        estimates = [i.estimated_seconds for i in self.tables if i.derived]
        return {
            "assets": len(self.tables),
            "partitions": sum(i.partition_count for i in self.tables),
            "unpartitioned": sum(not i.partitioned for i in self.tables),
            "rows_published": sum(i.rows_published or 0 for i in self.tables),
            "estimated_seconds": None if not estimates or None in estimates else round(sum(estimates), 2),
            "consumers": len(self.consumers),
        }

    def notify(self) -> list[str]:
        """Owners of the affected tables and of the consumers that read them."""
        return sorted({o for i in self.impacts for o in i.owners})

    def to_json(self) -> str:
        return json.dumps(
            {
                "scope": self.scope,
                "assets": [_impact_json(i) for i in self.tables],
                "consumers": [
                    {"asset": i.asset, "name": i.label, "kinds": i.kinds, "owners": i.owners, "reads": i.reads}
                    for i in self.consumers
                ],
                "totals": self.totals(),
                "notify": self.notify(),
                "open_branches": self.branches,
            },
            indent=2,
            sort_keys=True,
            default=str,
        )


def _impact_json(i: Impact) -> dict[str, Any]:
    return {
        "asset": i.asset,
        "reason": i.reason,
        "depth": i.depth,
        "via": i.via,
        "partitions": i.partitions,
        "partition_count": i.partition_count,
        "partitioned": i.partitioned,
        "code_version": i.code_version,
        "published_code_versions": i.published_code_versions,
        "rows_published": i.rows_published,
        "estimated_seconds": i.estimated_seconds,
        "owners": i.owners,
    }


def blast_radius(graph, seeds: Mapping[dg.AssetKey, Ranges], reasons: Mapping[dg.AssetKey, str] | None = None) -> Plan:
    """Propagate changed partition ranges from `seeds` to everything downstream, in dependency order. A
    partitioned asset none of whose partitions reads a changed one (a last-partition mapping, a region another
    region's change does not reach) is not in the blast radius, nor is what only it reaches."""
    ranges: dict[dg.AssetKey, Ranges] = {k: merge(r) for k, r in seeds.items()}
    depth: dict[dg.AssetKey, tuple[int, dg.AssetKey | None]] = {k: (0, None) for k in seeds}
    affected = set(seeds)
    order = _downstream_order(graph, seeds)
    for key in order:
        # A seed downstream of another seed also changes wherever its changed parents reach.
        mine: Ranges = list(ranges.get(key, []))
        partitioned = graph.get(key).partitions_def is not None
        for parent in graph.get(key).parent_keys:
            if parent not in affected:
                continue
            mapped = _map_edge(graph, parent, key, ranges[parent])
            if partitioned and not mapped:
                continue
            mine += mapped
            affected.add(key)  # an unpartitioned asset is rebuilt whole when any parent changes
            d = depth[parent][0] + 1
            if key not in depth or d < depth[key][0]:
                depth[key] = (d, parent)
        ranges[key] = merge(mine)
    impacts = []
    for key in (k for k in order if k in affected):
        node = graph.get(key)
        d, via = depth[key]
        pdef = node.partitions_def
        r = ranges[key]
        index = partition_index(pdef) if pdef is not None else None
        impacts.append(
            Impact(
                asset=key.to_user_string(),
                depth=d,
                via=via.to_user_string() if via else None,
                reason=(reasons or {}).get(key, "selected")
                if d == 0
                else f"downstream ({d}) of {via.to_user_string()}",
                partition_count=sum(hi - lo for lo, hi in r),
                materializable=node.is_materializable,
                kinds=sorted(node.kinds),
                owners=list(node.owners),
                code_version=node.code_version,
                ranges=_key_ranges(pdef, index, r) if index else [],
                reads=sorted(p.to_user_string() for p in node.parent_keys if p in ranges),
                label=str(node.metadata.get("consumer", key.to_user_string())),
                keys=index.keys_in(r) if index else [],
                partitioned=pdef is not None,
                derived=TABLE_METADATA in node.metadata,
            )
        )
    impacts.sort(key=lambda i: (not i.materializable, i.depth, i.asset))
    return Plan({}, impacts)


def _key_ranges(pdef: dg.PartitionsDefinition, index: PartitionIndex, ranges: Ranges) -> list[tuple[str, str]]:
    """(first key, last key) of each range, as Dagster reads a key range: for a time x static definition, each
    static key's consecutive days (Dagster orders such keys day first, so one region's days are apart)."""
    time, static = _dimensions(pdef)
    if time is None or static is None:
        return [(index.keys[lo], index.keys[hi - 1]) for lo, hi in ranges]
    days = partition_index(time)
    by_static: dict[str, dict[int, str]] = {}
    for key in index.keys_in(ranges):
        day, region = _split(pdef, key)
        by_static.setdefault(region, {})[days.position(day)] = key
    return [
        (keys[lo], keys[hi - 1])
        for _, keys in sorted(by_static.items())
        for lo, hi in merge((p, p + 1) for p in keys)
    ]


def _downstream_order(graph, seeds: Iterable[dg.AssetKey]) -> list[dg.AssetKey]:
    """The seeds and everything downstream of them, parents before children."""
    reached: set[dg.AssetKey] = set()
    stack = list(seeds)
    while stack:
        key = stack.pop()
        if key not in reached:
            reached.add(key)
            stack.extend(graph.get(key).child_keys)
    pending = {k: sum(1 for p in graph.get(k).parent_keys if p in reached) for k in reached}
    ready = sorted(k for k, n in pending.items() if n == 0)
    order = []
    while ready:
        key = ready.pop(0)
        order.append(key)
        for child in sorted(graph.get(key).child_keys):
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    return order


def _map_edge(graph, parent: dg.AssetKey, child: dg.AssetKey, ranges: Ranges) -> Ranges:
    parent_def, child_def = graph.get(parent).partitions_def, graph.get(child).partitions_def
    if child_def is None:  # an unpartitioned asset: it is affected (rebuilt whole), with no partitions of its own
        return []
    if parent_def is None:  # every partition of the child reads the whole unpartitioned parent
        return [(0, len(partition_index(child_def).keys))]
    mapping = graph.get_partition_mapping(child, parent)
    if isinstance(parent_def, dg.TimeWindowPartitionsDefinition) and isinstance(
        child_def, dg.TimeWindowPartitionsDefinition
    ):  # our arithmetic, property-tested against Dagster's (tests/test_planning.py); 100x faster at 3 years
        if isinstance(mapping, dg.TimeWindowPartitionMapping):
            offsets = (mapping.start_offset, mapping.end_offset)
            return map_downstream(ranges, partition_index(parent_def), partition_index(child_def), *offsets)
        if isinstance(mapping, dg.IdentityPartitionMapping) and parent_def == child_def:
            return map_downstream(ranges, partition_index(parent_def), partition_index(child_def))
    return _map_with_dagster(child, mapping, parent_def, child_def, ranges)


def _map_with_dagster(child: dg.AssetKey, mapping, parent_def, child_def, ranges: Ranges) -> Ranges:
    """Child partitions that read any of the parent's `ranges`, as Dagster's mapping API says (static and
    multi-partition mappings, all- and last-partition mappings)."""
    parent, kids = partition_index(parent_def), partition_index(child_def)
    subset = parent_def.subset_with_partition_keys(parent.keys_in(ranges))
    try:
        mapped = mapping.get_downstream_partitions_for_partitions(subset, parent_def, child_def)
    except Exception as e:  # noqa: BLE001 -- Dagster raises many kinds for a mapping that does not fit
        raise PlanError(
            f"{child.to_user_string()}: partition mapping {type(mapping).__name__} cannot be planned "
            f"between {parent_def} and {child_def}: {e}"
        ) from None
    return kids.ranges_of(str(k) for k in mapped.get_partition_keys())


@dataclass(frozen=True)
class Need:
    """An upstream partition a partition reads; `late`: it starts after the reading partition ends (late data)."""

    asset: str
    key: str
    late: bool

    @property
    def label(self) -> str:
        return catalog.input_label(self.asset, self.key)


def required_inputs(
    graph, child: dg.AssetKey, keys: Sequence[str], parents: Iterable[dg.AssetKey]
) -> dict[str, list[Need]]:
    """partition of `child` -> every partition of each of `parents` it reads through its partition mapping
    (Dagster's own mapping API), including partitions that do not exist yet: Dagster leaves those out of a
    mapping's answer, so both definitions are extended past their last partition first."""
    child_def = graph.get(child).partitions_def
    out: dict[str, list[Need]] = {k: [] for k in keys}
    for parent in parents:
        parent_def = graph.get(parent).partitions_def
        mapping = graph.get_partition_mapping(child, parent)
        wide_child, wide_parent = child_def, parent_def
        if isinstance(child_def, dg.TimeWindowPartitionsDefinition) and isinstance(
            parent_def, dg.TimeWindowPartitionsDefinition
        ):  # partitions after the last one exist for late data; other definitions are taken as they are
            offset = getattr(mapping, "end_offset", 0)
            wide_child = _extended(child_def, offset + 1)
            wide_parent = _extended(parent_def, _span(child_def, parent_def, offset + 1))
        for key in keys:
            mapped = mapping.get_upstream_mapped_partitions_result_for_partitions(
                wide_child.subset_with_partition_keys([key]), wide_child, wide_parent
            ).partitions_subset.get_partition_keys()
            end = _time_window(wide_child, key)
            out[key] += [
                Need(parent.to_user_string(), k, end is not None and _starts_after(wide_parent, k, end[1]))
                for k in mapped
            ]
    return out


def _time_window(pdef: dg.PartitionsDefinition | None, key: str) -> tuple[dt.datetime, dt.datetime] | None:
    """(start, end) of the time window of `key` (of its time dimension in a multi-partition definition), or
    None when `pdef` has no time dimension."""
    time, static = _dimensions(pdef)
    if time is None:
        return None
    w = time.time_window_for_partition_key(_split(pdef, key)[0] if static is not None else key)
    return w.start, w.end


def _starts_after(pdef: dg.PartitionsDefinition | None, key: str, moment: dt.datetime) -> bool:
    window = _time_window(pdef, key)
    return window is not None and window[0] >= moment


def _extended(pdef: dg.TimeWindowPartitionsDefinition, extra: int) -> dg.TimeWindowPartitionsDefinition:
    """`pdef` with `extra` more partitions after its last one (and no end date)."""
    return dg.TimeWindowPartitionsDefinition(
        start=pdef.start,
        cron_schedule=pdef.cron_schedule,
        timezone=pdef.timezone,
        fmt=pdef.fmt,
        end_offset=pdef.end_offset + max(extra, 0),
        exclusions=pdef.exclusions,
    )


def _span(child_def, parent_def, child_partitions: int) -> int:
    """How many of `parent_def`'s partitions `child_partitions` of `child_def`'s can cover (rounded up)."""
    c = child_def.time_window_for_partition_key(child_def.get_first_partition_key())
    p = parent_def.time_window_for_partition_key(parent_def.get_first_partition_key())
    ratio = (c.end - c.start) / (p.end - p.start)
    return int(ratio * child_partitions) + 2


def upstream_tables(graph, key: dg.AssetKey) -> list[dg.AssetKey]:
    """The parents of `key` that are derived tables (whose published partitions the warehouse knows)."""
    return [p for p in sorted(graph.get(key).parent_keys) if TABLE_METADATA in graph.get(p).metadata]


def plan_range(
    graph, select: str | None, start: dt.date | None, end: dt.date | None, where: Where | None = None
) -> Plan:
    """The blast radius of backfilling the selection over the days start..end (and the static keys `where`
    selects): each selected asset's partitions in that scope (see :func:`scoped_keys`), and everything
    downstream they reach. `plan` shows it and `materialize` runs its selected assets' share of it
    (:func:`materialize_runs`)."""
    keys = resolve_selection(graph, select)
    if start is not None and end is not None:
        check_range(graph, keys, start, end)
    check_where(graph, keys, where or {})
    return blast_radius(graph, selection_seeds(graph, keys, start, end, where))


@dataclass(frozen=True)
class Run:
    """One ranged Dagster run: assets of one partitions definition over one range of keys (as Dagster reads it), or
    unpartitioned assets (no keys), rebuilt whole."""

    assets: tuple[dg.AssetKey, ...]
    keys: tuple[str, ...]


def materialize_runs(
    graph, plan: Plan, selected: set[dg.AssetKey], published: Callable[[str], set[str]]
) -> tuple[list[Run], dict[str, dict[str, list[str]]]]:
    """The runs that rebuild the plan's partitions of the `selected` assets, parents first, and the partitions
    left waiting: asset -> partition -> the upstream partitions it reads that are neither published
    (`published(asset)`) nor rebuilt by an earlier run (a provisional table does not wait for late inputs).
    A waiting partition is not run: its run would be refused by the inputs gate."""
    planned: dict[dg.AssetKey, list[str]] = {}
    waiting: dict[str, dict[str, list[str]]] = {}
    impacts = {i.asset: i for i in plan.tables}
    order = [k for k in _downstream_order(graph, [dg.AssetKey.from_user_string(a) for a in impacts]) if k in selected]
    for key in order:
        impact = impacts.get(key.to_user_string())
        if impact is None:
            continue
        if not impact.partitioned:  # a plain asset is rebuilt whole after its parents; it has no inputs gate
            planned[key] = []
            continue
        if not impact.keys:
            continue
        node = graph.get(key)
        provisional = _metadata_value(node.metadata.get("incomplete_inputs")) == "provisional"
        rebuilt = {p.to_user_string(): set(planned.get(p, ())) for p in node.parent_keys}
        ready = []
        for part, needs in required_inputs(graph, key, impact.keys, upstream_tables(graph, key)).items():
            missing = [
                n.label
                for n in needs
                if not (n.key in published(n.asset) or n.key in rebuilt[n.asset] or (n.late and provisional))
            ]
            if missing:
                waiting.setdefault(key.to_user_string(), {})[part] = missing
            else:
                ready.append(part)
        planned[key] = ready
    return _runs(graph, order, planned), waiting


def named_by_range(
    graph,
    selected: Iterable[dg.AssetKey],
    start: dt.date | None,
    end: dt.date | None,
    waiting: Mapping[str, Iterable[str]],
    where: Where | None = None,
) -> dict[str, list[str]]:
    """Of the `waiting` partitions, those the scope itself names: a selected asset's partitions in it (the others
    are only reached downstream of them)."""
    named = {}
    for key, ranges in selection_seeds(graph, selected, start, end, where).items():
        if graph.get(key).partitions_def is None:
            continue
        index = partition_index(graph.get(key).partitions_def)
        blocked = sorted(set(index.keys_in(ranges)) & set(waiting.get(key.to_user_string(), ())))
        if blocked:
            named[key.to_user_string()] = blocked
    return named


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _runs(graph, order: Sequence[dg.AssetKey], planned: Mapping[dg.AssetKey, list[str]]) -> list[Run]:
    """Ranges of each asset's keys (:func:`_key_ranges`: a time x static definition's by static key), assets of
    one definition and range in one run, parents first; the planned unpartitioned assets together in a run of
    no partition keys."""
    groups: dict[tuple, list[dg.AssetKey]] = {}
    for key in order:
        pdef = graph.get(key).partitions_def
        if pdef is None:
            if key in planned:
                groups.setdefault((None, "", ""), []).append(key)
            continue
        index = partition_index(pdef)
        for first, last in _key_ranges(pdef, index, index.ranges_of(planned.get(key, ()))):
            groups.setdefault((pdef, first, last), []).append(key)
    group_of = {}
    for group, keys in groups.items():
        for key in keys:
            group_of.setdefault(key, []).append(group)
    needs = {
        g: {h for k in keys for a in graph.upstream_key_iterator(k) for h in group_of.get(a, ()) if h != g}
        for g, keys in groups.items()
    }
    runs: list[Run] = []
    done: set[tuple] = set()
    while needs:
        ready = [g for g, deps in needs.items() if deps <= done]
        if not ready:  # ranges that interleave across definitions: one run per asset range, in lineage order
            return [Run((k,), range_keys(pdef, lo, hi)) for k in order for pdef, lo, hi in group_of.get(k, ())]
        for g in ready:
            runs.append(Run(tuple(groups[g]), range_keys(*g)))
            done.add(g)
            del needs[g]
    return runs


def range_keys(pdef, first: str, last: str) -> tuple[str, ...]:
    """The keys of the range first..last as Dagster reads it (a time x static definition's: first's static key,
    first's day to last's)."""
    if pdef is None:
        return ()
    index = partition_index(pdef)
    time, static = _dimensions(pdef)
    if time is None or static is None:
        return tuple(index.keys[index.position(first) : index.position(last) + 1])
    (first_day, region), (last_day, _) = _split(pdef, first), _split(pdef, last)
    day_dimension = next(d.name for d in pdef.partitions_defs if d.name != static[0])
    days = partition_index(time)
    span = days.keys[days.position(first_day) : days.position(last_day) + 1]
    return tuple(str(dg.MultiPartitionKey({day_dimension: d, static[0]: region})) for d in span)


def resolve_selection(graph, select: str | None) -> set[dg.AssetKey]:
    """Materializable assets of a Dagster selection string (all of them when None): time-partitioned ones and
    unpartitioned ones (rebuilt whole)."""
    try:
        selection = dg.AssetSelection.from_string(select) if select else dg.AssetSelection.all()
        keys = {k for k in selection.resolve(graph) if graph.get(k).is_materializable}
    except Exception as e:  # Dagster raises several types for unknown keys and bad syntax
        raise PlanError(f"--select {select!r} does not resolve: {e}") from None
    if not keys:
        raise PlanError(f"--select {select!r} matches no materializable asset")
    for key in keys:
        if graph.get(key).partitions_def is not None:
            partition_index(graph.get(key).partitions_def)  # refuses dynamic partitions: their keys are the instance's
    return keys


def time_defs(graph, keys: Iterable[dg.AssetKey]) -> set[dg.TimeWindowPartitionsDefinition]:
    """The time-window definitions of `keys` (a multi-partition definition's time dimension)."""
    return {t for k in keys if (t := _dimensions(graph.get(k).partitions_def)[0]) is not None}


Where = Mapping[str, Sequence[str]]  # a static selection: dimension (or partition column) -> keys


def parse_where(items: Sequence[str] | None) -> dict[str, list[str]]:
    """``NAME=KEY[,KEY...]`` selections (``region=eu``, repeatable) as name -> keys."""
    out: dict[str, list[str]] = {}
    for item in items or ():
        name, _, keys = item.partition("=")
        if not name.strip() or not keys.strip():
            raise PlanError(f"--where {item!r}: write NAME=KEY[,KEY...], e.g. region=eu")
        out.setdefault(name.strip(), []).extend(k.strip() for k in keys.split(",") if k.strip())
    return out


def _dimensions(pdef: dg.PartitionsDefinition | None) -> tuple[Any, tuple[str | None, Any] | None]:
    """(time-window definition or None, (name, static definition) or None) of `pdef`; a multi-partition
    definition's dimensions by name, a static one's name None."""
    if isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        return pdef, None
    if isinstance(pdef, dg.MultiPartitionsDefinition):
        time = next((d.partitions_def for d in pdef.partitions_defs if isinstance(d.partitions_def,
                     dg.TimeWindowPartitionsDefinition)), None)  # fmt: skip
        static = next(((d.name, d.partitions_def) for d in pdef.partitions_defs
                       if not isinstance(d.partitions_def, dg.TimeWindowPartitionsDefinition)), None)  # fmt: skip
        return time, static
    return (None, (None, pdef)) if pdef is not None else (None, None)


def _split(pdef: dg.MultiPartitionsDefinition, key: str) -> tuple[str, str]:
    """(day key, static key) of a time x static definition's key."""
    _, static = _dimensions(pdef)
    parts = pdef.get_partition_key_from_str(key).keys_by_dimension
    return next(v for n, v in parts.items() if n != static[0]), parts[static[0]]


def _static_names(node) -> set[str]:
    """What a --where may call an asset's static dimension: its name in a multi-partition definition, and a
    derived table's partition column."""
    _, static = _dimensions(node.partitions_def)
    if static is None:
        return set()
    names = {static[0]} if static[0] else set()
    if SCHEME_METADATA in node.metadata:
        scheme = scheme_of(node)
        names.add(scheme.static[1])
    return names


def check_where(graph, keys: Iterable[dg.AssetKey], where: Where) -> None:
    """Refuse a --where naming no static dimension of the selection, or a key none of them has."""
    for name, wanted in where.items():
        nodes = [graph.get(k) for k in keys if name in _static_names(graph.get(k))]
        if not nodes:
            raise PlanError(f"--where {name}=...: no selected asset has a static dimension or column named {name!r}")
        known = {str(k) for n in nodes for k in _dimensions(n.partitions_def)[1][1].get_partition_keys()}
        unknown = [k for k in wanted if k not in known]
        if unknown:
            raise PlanError(f"--where {name}: no partition {', '.join(unknown)} (there are {', '.join(sorted(known))})")


def scoped_keys(graph, key: dg.AssetKey, start: dt.date | None, end: dt.date | None, where: Where | None) -> list[str]:
    """The partitions of asset `key` in the scope: whose whole time window lies in the days start..end (when it
    has a time dimension), and whose static key `where` selects (when it names its static dimension)."""
    node = graph.get(key)
    pdef = node.partitions_def
    time, static = _dimensions(pdef)
    if time is not None and (start is None or end is None):
        raise PlanError(f"{key.to_user_string()} is partitioned by time: give --from and --to")
    days = None
    if time is not None:
        lo, hi = partition_index(time).within(start, end)
        if static is None:
            return list(partition_index(time).keys[lo:hi])
        days = set(partition_index(time).keys[lo:hi])
    chosen = None
    for name, wanted in (where or {}).items():
        if name in _static_names(node):
            chosen = (chosen or set()) | set(wanted)
    out = []
    for k in partition_index(pdef).keys:
        day, region = _split(pdef, k) if time is not None else (None, k)
        if (days is None or day in days) and (chosen is None or region in chosen):
            out.append(k)
    return out


def check_range(graph, keys: set[dg.AssetKey], start: dt.date, end: dt.date) -> None:
    """Refuse an inverted range or one that starts before the selection's first partition (unpartitioned assets
    have no range to check)."""
    if end < start:
        raise PlanError(f"--from {start} is after --to {end}")
    pdefs = time_defs(graph, keys)
    if not pdefs:
        return
    first = min(p.time_window_for_partition_key(p.get_first_partition_key()).start.date() for p in pdefs)
    if start < first:
        raise PlanError(f"--from {start} is before the first partition of the selection ({first})")
    if start > dt.date.today():
        raise PlanError(f"--from {start} is in the future: no partition exists yet")
    last = max(p.time_window_for_partition_key(p.get_last_partition_key()).end.date() for p in pdefs)
    if end >= last:
        raise PlanError(
            f"--to {end} is after the last partition of the selection (it ends on {last - dt.timedelta(days=1)})"
        )


def selection_seeds(
    graph, keys: Iterable[dg.AssetKey], start: dt.date | None, end: dt.date | None, where: Where | None = None
) -> dict[dg.AssetKey, Ranges]:
    """The partitions of each selected asset in the scope (:func:`scoped_keys`; none for an unpartitioned
    asset: it is in the plan whole)."""
    seeds = {}
    for key in keys:
        pdef = graph.get(key).partitions_def
        if pdef is None:  # rebuilt whole, whatever the range
            seeds[key] = []
            continue
        seeds[key] = partition_index(pdef).ranges_of(scoped_keys(graph, key, start, end, where))
    return seeds


def add_warehouse_facts(plan: Plan, con: duckdb.DuckDBPyConnection | None) -> Plan:
    """Fill in rows published now, the code versions they were published under, a runtime estimate from the
    ledger's past runs (None where there is no history), and the open branches staging any of the tables."""
    if con is None:
        return plan
    names = [i.asset for i in plan.tables]
    for b in catalog.branches(con):
        staged = {a: sorted(p) for a, p in catalog.branch_heads(con, b["branch"]).items() if a in names}
        if b["state"] == "open" and staged:
            plan.branches.append({**{k: b[k] for k in ("branch", "reviewer", "approved_by")}, "partitions": staged})
    published: dict[str, dict[str, tuple[int, str]]] = {}
    for asset, key, rows, code in catalog.published_facts(con, names):
        published.setdefault(asset, {})[key] = (rows or 0, code)
    pace = catalog.seconds_per_partition(con, names)
    for impact in plan.tables:
        mine = published.get(impact.asset, {})
        hits = [mine[k] for k in impact.keys if k in mine]
        impact.rows_published = sum(r for r, _ in hits)
        versions: dict[str, int] = {}
        for _, code in hits:
            versions[code] = versions.get(code, 0) + 1
        impact.published_code_versions = versions
        if impact.asset in pace:
            impact.estimated_seconds = round(pace[impact.asset] * impact.partition_count, 2)
    return plan


def stale_seeds(graph, con: duckdb.DuckDBPyConnection) -> tuple[dict[dg.AssetKey, Ranges], dict[dg.AssetKey, str]]:
    """Partitions published under another code version than the current definition's, and provisional ones
    whose late inputs are all published now (they were made without them)."""
    stale: dict[str, list[str]] = {}
    why: dict[str, list[str]] = {}
    codes: dict[str, set[str]] = {}
    for asset, key, _, code in catalog.published_facts(con):
        node = _table_node(graph, asset)
        if node is not None and code != node.code_version:
            stale.setdefault(asset, []).append(key)
            codes.setdefault(asset, set()).add(code)
    for asset, old in codes.items():
        current = graph.get(dg.AssetKey(asset)).code_version
        why.setdefault(asset, []).append(
            f"stale: published under code version {', '.join(sorted(old))}, current {current}"
        )
    now_published = catalog.published_keys(con)
    ready: dict[str, list[str]] = {}
    for (asset, key), missing in catalog.provisional(con).items():
        inputs = [catalog.parse_input(m) for m in missing]
        if _table_node(graph, asset) is not None and all(k in now_published(u) for u, k in inputs):
            ready.setdefault(asset, []).append(key)
    for asset, keys in ready.items():
        stale.setdefault(asset, []).extend(keys)
        why.setdefault(asset, []).append(f"provisional: {len(keys)} published before late inputs that are in now")
    seeds, reasons = {}, {}
    for asset, keys in sorted(stale.items()):
        key = dg.AssetKey(asset)
        index = partition_index(graph.get(key).partitions_def)
        seeds[key] = index.ranges_of(k for k in set(keys) if k in index.positions)
        reasons[key] = "; ".join(why[asset])
    return seeds, reasons


def _table_node(graph, asset: str):
    key = dg.AssetKey(asset)
    return graph.get(key) if graph.has(key) and graph.get(key).is_materializable else None


def render(plan: Plan) -> str:
    """The plan as a table for people."""
    if not plan.impacts:
        return f"Blast radius of {plan.scope.get('description', 'the change')}\n\nNothing to backfill."
    rows = [("asset", "why", "partitions", "rows now", "code: published -> current", "est.", "owners")]
    for i in plan.tables:
        published = ", ".join(f"{v} ({n})" for v, n in sorted(i.published_code_versions.items())) or "-"
        rows.append(
            (
                i.asset,
                i.reason,
                f"{_preview(i.partitions)} ({i.partition_count})" if i.partitioned else WHOLE,
                "-" if i.rows_published is None or not i.derived else f"{i.rows_published:,}",
                f"{published} -> {i.code_version}" if i.derived else f"plain asset, code {i.code_version or '-'}",
                duration(i.estimated_seconds) if i.derived else "-",
                ", ".join(i.owners),
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [f"Blast radius of {plan.scope.get('description', 'the change')}", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if plan.consumers:
        lines += ["", "Consumers to notify:"]
        lines += [
            f"  {c.label} ({', '.join(c.kinds)}; {', '.join(c.owners) or 'no owner'}) reads {', '.join(c.reads)}"
            for c in plan.consumers
        ]
    t = plan.totals()
    whole = f" + {plural(t['unpartitioned'], 'unpartitioned asset')} rebuilt whole" if t["unpartitioned"] else ""
    plain = " and plain assets" if any(not i.derived for i in plan.tables) else ""
    lines += [
        "",
        f"Totals: {t['assets']} assets, {t['partitions']:,} partitions{whole}, {t['rows_published']:,} rows "
        f"published now, estimated {duration(t['estimated_seconds'])} of transform + audit time "
        f"(run start-up{plain} not included)",
        f"Notify: {', '.join(plan.notify()) or 'nobody'}",
    ]
    for b in plan.branches:
        review = f"approved by {b['approved_by']}" if b["approved_by"] else f"review: {b['reviewer'] or 'none'}"
        parts = sorted(b["partitions"].items())
        staged = "; ".join(f"{a} {ks[0]}" if len(ks) == 1 else f"{a} {ks[0]}..{ks[-1]} ({len(ks)})" for a, ks in parts)
        lines.append(f"Open branch {b['branch']} ({review}) will change: {staged}")
    return "\n".join(lines)


def _preview(ranges: Sequence[str], n: int = 3) -> str:
    return ", ".join(ranges[:n]) + (f" +{len(ranges) - n} ranges" if len(ranges) > n else "") if ranges else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"
