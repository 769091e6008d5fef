"""Change notes: what a publish, or a whole backfill, changed in the numbers people quote.

The same note is attached to each publish in the Dagster UI (markdown metadata) and assembled for a
whole backfill or brief from the ledger by ``backfill-assets notes``. Values are compared as Decimals,
so a moved total is exact to the cent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from typing import Any

import duckdb

from . import catalog

MOVERS = 5


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@dataclass
class MetricChange:
    """One metric of one table: its value before and after, per partition and overall."""

    asset: str
    metric: str
    partitions: list[tuple[str, Decimal | None, Decimal | None]]  # (partition, before, after)

    @property
    def before(self) -> Decimal:
        return sum((b for _, b, _ in self.partitions if b is not None), Decimal(0))

    @property
    def after(self) -> Decimal:
        return sum((a for _, _, a in self.partitions if a is not None), Decimal(0))

    @property
    def delta(self) -> Decimal:
        return self.after - self.before

    @property
    def relative(self) -> float | None:
        return None if self.before == 0 else float(self.delta / abs(self.before))

    def movers(self, n: int = MOVERS) -> list[tuple[str, Decimal | None, Decimal | None, Decimal]]:
        moved = [(k, b, a, (a or 0) - (b or 0)) for k, b, a in self.partitions if (a or 0) != (b or 0)]
        return sorted(moved, key=lambda m: (-abs(m[3]), m[0]))[:n]


def metric_changes(
    asset: str, before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
) -> list[MetricChange]:
    """partition -> metric -> value, before and after, into one MetricChange per metric."""
    metrics = sorted({m for values in (*before.values(), *after.values()) for m in values})
    keys = sorted(set(before) | set(after))
    return [
        MetricChange(asset, m, [(k, _dec(before.get(k, {}).get(m)), _dec(after.get(k, {}).get(m))) for k in keys])
        for m in metrics
    ]


@dataclass
class Note:
    """A change note: scope, the brief behind it (if any), what was published or held, and every metric."""

    title: str
    brief: dict[str, Any] | None = None
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)  # asset -> published/held keys, checks
    changes: list[MetricChange] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    # unpartitioned assets downstream of the published tables: rebuilt whole, not versioned by backfill-assets
    unpartitioned: list[str] = field(default_factory=list)
    pending: str = ""  # why nothing has been published yet (an open branch)

    def expected_changes(self) -> list[dict[str, Any]]:
        """The brief's expected changes, each with the actual relative move and a verdict."""
        by_metric = {(c.asset, c.metric): c for c in self.changes}
        out = []
        for e in (self.brief or {}).get("expected_changes") or []:
            change = by_metric.get((e.get("asset"), e.get("metric")))
            actual = change.relative if change else None
            bound = float(e.get("max_relative_change", 0))
            if change is None:
                verdict = "not changed by this backfill"
            elif actual is None:
                verdict = "no previous value"
            else:
                verdict = "within" if abs(actual) <= bound else "OUTSIDE the expected bound"
            out.append({**e, "max_relative_change": bound, "actual": actual, "verdict": verdict})
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "title": self.title,
                "brief": {k: v for k, v in (self.brief or {}).items() if not k.startswith("_")} or None,
                "assets": self.assets,
                "metrics": [
                    {
                        "asset": c.asset,
                        "metric": c.metric,
                        "before": c.before,
                        "after": c.after,
                        "delta": c.delta,
                        "relative": c.relative,
                        "partitions": [{"partition": k, "before": b, "after": a} for k, b, a in c.partitions],
                    }
                    for c in self.changes
                ],
                "expected_changes": self.expected_changes(),
                "consumers": self.consumers,
                "unpartitioned": self.unpartitioned,
                "pending": self.pending or None,
            },
            indent=2,
            sort_keys=True,
            default=str,
        )

    def to_markdown(self, charts: Mapping[tuple[str, str], str] | None = None) -> str:
        lines = [f"# {self.title}", ""]
        if self.brief:
            b = self.brief
            lines += [
                f"**Why:** {str(b.get('reason', '')).strip()}",
                "",
                f"**Who:** owner {b.get('owner')}, reviewed by {b.get('reviewer')}; risk: {b.get('risk')}",
                "",
            ]
        if self.pending:
            lines += [f"**Not published yet:** {self.pending}.", ""]
        lines += ["## What changed", "", "| asset | published | held | checks |", "| --- | --- | --- | --- |"]
        for asset, info in sorted(self.assets.items()):
            lines.append(
                f"| {asset} | {_ranges(info['published'])} | {_ranges(info['held']) or '-'} | {info['checks']} |"
            )
        if self.unpartitioned:
            lines += [
                "",
                f"Downstream and unpartitioned, rebuilt whole (no versions, so no diff or rollback here): "
                f"{', '.join(self.unpartitioned)}.",
            ]
        lines += [
            "",
            "## Metrics",
            "",
            "| asset | metric | before | after | change | relative |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in self.changes:
            lines.append(f"| {c.asset} | {c.metric} | {c.before:,} | {c.after:,} | {c.delta:+,} | {_pct(c.relative)} |")
        for c in self.changes:
            movers = c.movers()
            if not movers:
                continue
            lines += [
                "",
                f"### {c.asset}.{c.metric}: largest movers",
                "",
                "| partition | before | after | change |",
                "| --- | --- | --- | --- |",
            ]
            lines += [
                f"| {k} | {b if b is not None else '-'} | {a if a is not None else '-'} | {d:+,} |"
                for k, b, a, d in movers
            ]
            if charts and (c.asset, c.metric) in charts:
                lines += ["", f"![{c.asset}.{c.metric} before and after]({charts[(c.asset, c.metric)]})"]
        expected = self.expected_changes()
        if expected:
            lines += [
                "",
                "## Expected changes (from the brief)",
                "",
                "| asset | metric | allowed | actual | verdict |",
                "| --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {e['asset']} | {e['metric']} | ±{e['max_relative_change']:.2%} | {_pct(e['actual'])} | "
                f"{e['verdict']} |"
                for e in expected
            ]
        if self.consumers:
            lines += ["", "## Tell", "", *[f"- {c}" for c in self.consumers]]
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2%}"


def _ranges(keys: Sequence[str]) -> str:
    if not keys:
        return ""
    keys = sorted(keys)
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]} ({len(keys)})"


def maintenance_notice(plan: Any, branch: str, who: str, reviewer: str | None) -> str:
    """What the tables and consumers of a branch's blast radius (a :class:`planning.Plan`) say while it is open."""
    changes = "; ".join(f"{i.asset} {', '.join(i.partitions)}" for i in plan.tables)
    review = f", after review by {reviewer}" if reviewer else ""
    return (
        f"Maintenance: {who} is staging in branch {branch} and will change {changes}. Consumers read the current "
        f"data until the branch publishes, all tables at once{review}."
    )


def note_from_ledger(con: duckdb.DuckDBPyConnection, tag: str, value: str, title: str) -> Note:
    """The note of every publish, hold and branch stage whose run carried the tag `tag` = `value` (a backfill, brief
    or branch); a partition held and then published (or staged) by a later run counts as published."""
    note = Note(title)
    failures: dict[str, list[str]] = {}
    before: dict[str, dict[str, Any]] = {}
    after: dict[str, dict[str, Any]] = {}
    for entry in catalog.entries_tagged(con, tag, [value], ["publish", "branch", "hold"]):
        asset, action = entry["asset"], entry["action"]
        info = note.assets.setdefault(asset, {"published": [], "held": [], "checks": "all passed"})
        keys = entry["partition_keys"]
        if action == "hold":
            info["held"] = sorted({*info["held"], *keys})
        else:  # published, or staged in a branch (published with it): a later run that passes is no longer held
            info["published"] = sorted({*info["published"], *keys})
            info["held"] = [k for k in info["held"] if k not in keys]
        failed = failures.setdefault(asset, [])
        failed += [n for n, c in entry["checks"].items() if not c.passed and not c.warn and n not in failed]
        if failed:
            names = ", ".join(failed)
            info["checks"] = f"failed: {names}" if info["held"] else f"all passed (re-run after {names} failed)"
        m = entry["metrics"]
        mine_before, mine_after = before.setdefault(asset, {}), after.setdefault(asset, {})
        for key, values in m.get("before", {}).items():
            mine_before.setdefault(key, values)  # the first run's view of what was published before
        if action != "hold":
            mine_after.update(m.get("after", {}))
    for asset in note.assets:
        note.changes += metric_changes(asset, before.get(asset, {}), after.get(asset, {}))
    return note


def svg_chart(change: MetricChange, width: int = 720, height: int = 260) -> str:
    """Before (grey, dashed) and after (blue) per partition, as a standalone SVG."""
    points = change.partitions
    values = [float(v) for _, b, a in points for v in (b, a) if v is not None] or [0.0]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    left, right, top, bottom = 70, 20, 30, 40
    n = max(len(points) - 1, 1)

    def xy(i: int, v: Decimal) -> str:
        x = left + (width - left - right) * i / n
        y = top + (height - top - bottom) * (1 - (float(v) - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    def line(index: int, style: str) -> str:
        pts = " ".join(xy(i, p[index]) for i, p in enumerate(points) if p[index] is not None)
        return f'<polyline fill="none" {style} points="{pts}"/>'

    title = escape(f"{change.asset}.{change.metric}: before (dashed) and after, per partition")
    first, last = (escape(points[0][0]), escape(points[-1][0])) if points else ("", "")
    return (
        "\n".join(
            [
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
                'font-size="12">',
                f'<rect width="{width}" height="{height}" fill="white"/>',
                f'<text x="{left}" y="18">{title}</text>',
                f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
                f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
                f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{hi:,.2f}</text>',
                f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">{lo:,.2f}</text>',
                f'<text x="{left}" y="{height - 20}">{first}</text>',
                f'<text x="{width - right}" y="{height - 20}" text-anchor="end">{last}</text>',
                line(2, 'stroke="#1f6feb" stroke-width="2"'),
                line(1, 'stroke="#555" stroke-width="1.5" stroke-dasharray="5,4"'),
                "</svg>",
            ]
        )
        + "\n"
    )
