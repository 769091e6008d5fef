"""Try a backfill on a slice: what its runs in a throwaway branch did, against what is published, and what the
full scope will cost at that pace. Nothing here moves a pointer; the caller discards the branch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from . import catalog, diff, warehouse
from .audit import plural
from .planning import Plan


@dataclass
class AssetTrial:
    asset: str
    partitions: int  # in the slice
    held: int
    checks: dict[str, bool]  # check -> passed in every run of the slice
    scaling: float  # seconds over the slice that grow with the rows: the transform and the audit's profile scan
    fixed: float  # seconds that do not: the rest of the audit (each check's own queries)
    rows: int  # the slice's new rows
    metrics: dict[str, tuple[float, float]]  # metric -> (published, branch) summed over the slice
    diff: diff.DiffResult | None  # the branch's rows against the published ones, keyed on the grain
    full_partitions: int = 0

    @property
    def seconds(self) -> float:
        return self.scaling + self.fixed

    @property
    def seconds_per_partition(self) -> float:
        return self.seconds / self.partitions if self.partitions else 0.0

    @property
    def estimated_seconds(self) -> float:
        """The full scope's transform + audit: the row-bound part scaled by partitions, the rest as measured."""
        ratio = self.full_partitions / self.partitions if self.partitions else 0.0
        return self.scaling * ratio + self.fixed

    @property
    def estimated_rows(self) -> int:
        return round(self.rows / self.partitions * self.full_partitions) if self.partitions else 0


@dataclass
class Trial:
    branch: str
    assets: list[AssetTrial] = field(default_factory=list)
    wall_seconds: float = 0.0  # the slice's runs end to end, start-up included
    runs: int = 0
    full_runs: int = 0

    @property
    def passed(self) -> bool:
        return all(a.held == 0 for a in self.assets)

    @property
    def estimated_seconds(self) -> float:
        """Each table's estimate, plus the slice's per-run overhead (Dagster's run around the step) for each run of
        the scope."""
        work = sum(a.seconds for a in self.assets)
        startup = (self.wall_seconds - work) / self.runs if self.runs else 0.0
        return sum(a.estimated_seconds for a in self.assets) + max(startup, 0.0) * self.full_runs

    def render(self) -> str:
        lines = [f"Try in branch {self.branch}: " + ("every check passed" if self.passed else "HELD"), ""]
        for a in self.assets:
            checks = " ".join(f"{n}{'+' if ok else '!'}" for n, ok in sorted(a.checks.items()))
            lines.append(
                f"{a.asset}: {plural(a.partitions, 'partition')}, {a.rows:,} rows, "
                f"{a.seconds_per_partition:.3f}s per partition; checks {checks}"
            )
            for metric, (before, after) in sorted(a.metrics.items()):
                change = f"{(after - before) / before:+.2%}" if before else "new"
                lines.append(f"  {metric}: {before:,.2f} -> {after:,.2f} ({change})")
            if a.diff is not None:
                d = a.diff
                lines.append(
                    f"  rows on the grain: {d.matched:,} matched ({d.partial_matches:,} changed), "
                    f"{d.base_only:,} only published, {d.target_only:,} only new"
                )
            lines.append(
                f"  full scope: {plural(a.full_partitions, 'partition')}, about {a.estimated_rows:,} rows, "
                f"{a.estimated_seconds:.1f}s of transform + audit"
            )
        lines += [
            "",
            f"Estimated full backfill: {self.estimated_seconds:.1f}s in {plural(self.full_runs, 'run')} "
            f"(this slice: {self.wall_seconds:.1f}s in {plural(self.runs, 'run')})",
        ]
        return "\n".join(lines)


def collect(
    con: duckdb.DuckDBPyConnection,
    branch: str,
    plan: Plan,
    grains: Mapping[str, list[str]],
    wall_seconds: float,
    runs: int,
    full_runs: int,
    lineage: Sequence[str] = (),
) -> Trial:
    """What the branch's runs recorded (checks, timings, metrics), each table's keyed diff against what is
    published for the same partitions, and the full scope of `plan` at the slice's pace; tables in `lineage`
    order (parents first)."""
    trial = Trial(branch, wall_seconds=wall_seconds, runs=runs, full_runs=full_runs)
    full = {i.asset: i.partition_count for i in plan.tables}
    heads = catalog.branch_heads(con, branch)
    order = {a: n for n, a in enumerate(lineage)}
    for asset, entries in sorted(catalog.branch_entries(con, branch).items(), key=lambda e: order.get(e[0], 0)):
        parts = heads.get(asset, {})
        checks: dict[str, bool] = {}
        metrics: dict[str, list[float]] = {}
        scaling = fixed = 0.0
        for entry in entries:
            for name, record in entry["checks"].items():
                checks[name] = checks.get(name, True) and (record.passed or record.warn)
            t = entry["seconds"]
            scaling += t.get("transform", 0.0) + t.get("profile", 0.0)
            fixed += t.get("audit", 0.0) - t.get("profile", 0.0)
            for side, index in (("before", 0), ("after", 1)):
                for values in entry["metrics"].get(side, {}).values():
                    for metric, value in values.items():
                        metrics.setdefault(metric, [0.0, 0.0])[index] += float(value or 0)
        trial.assets.append(
            AssetTrial(
                asset,
                len(parts),
                sum(1 for _, status, _ in parts.values() if status != "branched"),
                checks,
                scaling,
                max(fixed, 0.0),
                catalog.row_count(con, [v for v, _, _ in parts.values()]),
                {m: (b, a) for m, (b, a) in metrics.items()},
                _diff(con, asset, parts, grains.get(asset)),
                full.get(asset, len(parts)),
            )
        )
    return trial


def _diff(con, asset: str, parts, grain) -> diff.DiffResult | None:
    published = warehouse.published_partitions(con, asset)
    base = [published[k][0] for k in parts if k in published]
    if not grain or not base:
        return None
    warehouse.version_view(con, asset, "_bfa_try_base", base)
    warehouse.version_view(con, asset, "_bfa_try_new", [v for v, _, _ in parts.values()])
    return diff.diff_relations(con, "_bfa_try_base", "_bfa_try_new", grain, sample_size=0)


def as_json(trial: Trial) -> dict[str, Any]:
    return {
        "branch": trial.branch,
        "passed": trial.passed,
        "estimated_seconds": round(trial.estimated_seconds, 2),
        "slice_seconds": round(trial.wall_seconds, 2),
        "assets": [
            {
                "asset": a.asset,
                "partitions": a.partitions,
                "held": a.held,
                "checks": a.checks,
                "seconds_per_partition": round(a.seconds_per_partition, 4),
                "rows": a.rows,
                "metrics": {m: {"published": b, "branch": n} for m, (b, n) in a.metrics.items()},
                "full_partitions": a.full_partitions,
                "estimated_rows": a.estimated_rows,
                "estimated_seconds": round(a.estimated_seconds, 2),
                "rows_changed": a.diff.partial_matches if a.diff else None,
            }
            for a in trial.assets
        ],
    }
