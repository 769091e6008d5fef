"""History you can trust: every version of every partition, rollback, approval, discard and retention.

Each function validates everything first and then changes the warehouse in one transaction (through
:mod:`backfill_assets.warehouse`), so a refusal leaves the data exactly as it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from . import audit, catalog, changes, diff
from . import warehouse as wh
from .partitions import Scheme, hashable

GROUPING_TAGS = ("dagster/backfill", "backfill_assets/brief")  # run tags that make several runs one backfill


class HistoryError(ValueError):
    """A request the history cannot honour; the message names the asset, partition and version."""


def versions(
    con: duckdb.DuckDBPyConnection, asset: str, partitions: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Every version of each partition of `asset` (or of `partitions`), newest first, with the checks of the run
    that made it."""
    return catalog.version_rows(con, asset, partitions)


def render_versions(asset: str, rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return f"{asset}: no versions recorded"
    checks = [" ".join(f"{n}{'+' if ok else '!'}" for n, ok in r["checks"].items()) or "-" for r in rows]
    width = max(len("checks"), *map(len, checks))
    key_width = max(len("partition"), *(len(r["partition"]) for r in rows))
    lines = [
        f"{'partition':<{key_width}} {'version':>7}  {'status':<11} {'rows':>8}  {'code':<5} {'checks':<{width}} "
        f"{'run':<8}  status since (UTC)"
    ]
    for r, passed in zip(rows, checks, strict=True):
        when = (r["decided_at"] or r["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        status = r["status"] + ("*" if r.get("missing_inputs") else "")
        lines.append(
            f"{r['partition']:<{key_width}} {r['version']:>7}  {status:<11} {r['rows'] or 0:>8}  "
            f"{r['code_version'] or '-':<5} {passed:<{width}} {(r['run_id'] or '-')[:8]:<8}  {when}"
        )
    lines.append("checks: + passed, ! failed")
    if any(r.get("missing_inputs") for r in rows):
        lines.append("*: provisional, made before late upstream partitions were published (--json lists them)")
    return "\n".join(lines)


def published_versions(con: duckdb.DuckDBPyConnection, asset: str) -> dict[str, int]:
    """partition -> its published version."""
    return {k: v for k, (v, _, _) in wh.published_partitions(con, asset).items()}


def rollback_targets(
    con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str], to_version: int | None = None
) -> dict[str, int]:
    """partition -> the version a rollback publishes: `to_version`, or what the pointer held before its last
    change (from the pointer history: after publishing g1, g2, g3, rolling back, publishing g4 and rolling back
    again, that is g2, never the rolled-back g3; a further rollback goes on to g1).

    Refuses (HistoryError) when a partition has nothing published, no earlier state, or a target whose
    rows retention removed.
    """
    if to_version is not None and len(keys) != 1:
        raise HistoryError("--to-version names one version, so give one --partition")
    published = published_versions(con, asset)
    for key in keys:
        if key not in published:
            raise HistoryError(f"{asset} [{key}] has no published version to roll back")
    if to_version is not None:
        (key,) = keys
        found = catalog.version_info(con, asset, key, to_version)
        if found is None:
            raise HistoryError(f"version {to_version} is not a version of {asset} [{key}]")
        _check_restorable(asset, key, to_version, *found, named=True)
        return {key: to_version}
    previous = catalog.previous_versions(con, asset, keys)
    targets = {}
    for key in keys:
        if key not in previous:
            raise HistoryError(f"{asset} [{key}] has no earlier version to roll back to")
        version, status = previous[key]
        _check_restorable(asset, key, version, status, None, named=False)
        targets[key] = version
    return targets


def _check_restorable(
    asset: str, key: str, version: int, status: str, when: dt.datetime | None, named: bool
) -> None:
    if status == "vacuumed":
        what = f"version {version} of {asset} [{key}]" if named else (
            f"the version of {asset} [{key}] before the published one ({version})"
        )
        on = f" on {when:%Y-%m-%d}" if when else ""
        raise HistoryError(f"{what} was removed by retention{on}; it cannot be published again. Nothing was changed.")
    if status not in catalog.ROLLBACK_TARGETS:
        raise HistoryError(
            f"version {version} of {asset} [{key}] is {status}, not an earlier published "
            "version" + ("; use approve for held versions" if status == "held" else "")
        )


def cascade_targets(
    con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str], downstream: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, int]]:
    """Downstream partitions (asset -> partitions in the blast radius) whose published version came from the
    same Dagster backfill or brief (or, without either, the same runs) as `asset`'s published `keys`, each
    mapped to its previous version."""
    published = published_versions(con, asset)
    ids = [published[k] for k in keys if k in published]
    runs = {r for r in catalog.runs_of(con, ids).values() if r}
    for tag in GROUPING_TAGS:  # widen to every run of the same Dagster backfill or brief
        runs |= set(catalog.runs_tagged_like(con, sorted(runs), tag))
    targets: dict[str, dict[str, int]] = {}
    for child, child_keys in downstream.items():
        current = published_versions(con, child)
        made_by = catalog.runs_of(con, [current[k] for k in child_keys if k in current])
        from_same = [k for k in child_keys if k in current and made_by.get(current[k]) in runs]
        if from_same:
            targets[child] = rollback_targets(con, child, from_same)
    return targets


def rollback(
    con: duckdb.DuckDBPyConnection,
    targets: dict[str, dict[str, int]],
    reason: str,
    actor: str | None,
    explicit: Collection[str] = (),
) -> None:
    """Publish the target versions again, atomically across every asset; the displaced ones are rolled back.
    The targets come from :func:`rollback_targets`: each partition steps back to its state before its last
    change, except in the `explicit` assets (``--to-version``: a named version, which a later rollback undoes
    like a publish)."""
    wh.repoint(
        con, targets, action="rollback", displaced="rolled_back", step_back=set(targets) - set(explicit),
        reason=reason, actor=actor,
    )  # fmt: skip


def undo_branch(con: duckdb.DuckDBPyConnection, branch: str, actor: str | None, reason: str | None) -> dict:
    """Step every partition a published branch changed back to its state before, in one transaction (a plain
    rollback of all of them at once). Refused while any of them has been changed again since."""
    info = catalog.branch_info(con, branch)
    if info is None or info["state"] != "published":
        raise HistoryError(f"branch {branch} is {info['state'] if info else 'unknown'}, not published: nothing to undo")
    changed = catalog.branch_published(con, branch)
    moved = [f"{a} {k}" for a, parts in sorted(changed.items()) for k, (_, now) in sorted(parts.items()) if not now]
    if moved:
        raise HistoryError(
            f"branch {branch} cannot be undone as one: {', '.join(moved[:5])} changed again since it published; "
            "roll those back first"
        )
    targets = {asset: rollback_targets(con, asset, sorted(parts)) for asset, parts in changed.items()}
    with catalog.transaction(con, checkpoint=True):
        wh.repoint_in(
            con, targets, "rollback", "rolled_back", set(targets),
            reason=reason or f"undo branch {branch}", actor=actor, params={"branch": branch},
        )  # fmt: skip
        catalog.close_branch(con, branch, "undone", actor)
    return targets


BRANCH_ACTIONS = ("approve", "publish", "discard", "undo")


def decide_branch(
    con: duckdb.DuckDBPyConnection, action: str, branch: str, by: str | None, reason: str | None
) -> dict[str, dict[str, int]]:
    """Approve, publish, discard or undo `branch` (the CLI's ``branch`` and the UI's ``branch_decision`` job);
    returns the pointers it moved: asset -> partition -> version consumers read now."""
    if action == "approve":
        if not (by and reason):
            raise wh.BranchError("approving a branch needs who approves it (its reviewer) and why")
        wh.approve_branch(con, branch, by, reason)
        return {}
    if action == "publish":
        return wh.publish_branch(con, branch, by, reason)
    if action == "undo":
        return undo_branch(con, branch, by, reason)
    if action == "discard":
        wh.discard_branch(con, branch, by, reason)
        return {}
    raise ValueError(f"unknown branch action {action!r}; one of {', '.join(BRANCH_ACTIONS)}")


def held_versions(
    con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str] | None = None, status: str = "held"
) -> dict[str, int]:
    """partition -> its newest `status` version newer than what is published (awaiting a decision)."""
    held = catalog.newest_pending(con, asset, status)
    if keys is None:
        return held
    missing = [k for k in keys if k not in held]
    if missing:
        raise HistoryError(f"{asset} has no {status} version awaiting a decision for {', '.join(missing)}")
    return {k: held[k] for k in keys}


def approve(
    con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str] | None, by: str, why: str
) -> dict[str, int]:
    """Publish held candidates a person accepted, recording who and why."""
    targets = held_versions(con, asset, keys)
    if not targets:
        raise HistoryError(f"{asset} has no held versions awaiting a decision")
    _require(by, why)
    wh.repoint(con, {asset: targets}, action="approve", displaced="superseded", reason=why, actor=by)
    return targets


def discard(con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str] | None, by: str, why: str) -> int:
    """Delete held candidates a person rejected; returns the rows freed."""
    targets = held_versions(con, asset, keys)
    if not targets:
        raise HistoryError(f"{asset} has no held versions awaiting a decision")
    _require(by, why)
    stray = catalog.strays_of_runs(con, asset, list(targets.values()), "held")
    return wh.drop_versions(con, asset, [*targets.values(), *stray], "discarded", "discard", reason=why, actor=by)


def cutover(con: duckdb.DuckDBPyConnection, asset: str, keys: Sequence[str] | None, reason: str) -> dict[str, int]:
    """Publish parallel candidates (parallel_version), after comparing them with the diff command."""
    targets = held_versions(con, asset, keys, status="candidate")
    if not targets:
        raise HistoryError(f"{asset} has no parallel candidates to cut over")
    wh.repoint(con, {asset: targets}, action="cutover", displaced="superseded", reason=reason)
    return targets


def _require(by: str, why: str) -> None:
    if not (by or "").strip() or not (why or "").strip():
        raise HistoryError("say who decides and why (--by and --reason)")


@dataclass(frozen=True)
class Retention:
    """Keep a version while it is among the newest `keep_versions` of its partition or younger than `keep_days`."""

    keep_versions: int = 3
    keep_days: int = 30


def vacuum_candidates(
    con: duckdb.DuckDBPyConnection, retention: Mapping[str, Retention], protected: set[int], now: dt.datetime | None
) -> list[dict[str, Any]]:
    """Versions retention may remove: superseded or rolled back, beyond both limits, not protected by a brief.
    Published, held and staged versions are never candidates."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    out = []
    for asset, rule in sorted(retention.items()):
        rows = catalog.retention_candidates(con, asset, rule.keep_versions, now - dt.timedelta(days=rule.keep_days))
        out += [
            {"asset": asset, "version": v, "partition": k, "rows": n or 0, "status": s, "decided_at": d}
            for v, k, n, s, d in rows
            if v not in protected
        ]
    return out


def brief_protected_versions(con: duckdb.DuckDBPyConnection, brief_ids: Iterable[str]) -> set[int]:
    """Versions a brief still needs: those its runs published, and the ones they replaced (its way back)."""
    ids = list(brief_ids)
    if not ids:
        return set()
    made = catalog.entries_tagged(con, "backfill_assets/brief", ids, ["publish"])
    protected = {v for e in made for v in e["versions"]}
    entries = [e["entry_id"] for e in made]
    return protected | catalog.replaced_by_entries(con, entries)


def vacuum(con: duckdb.DuckDBPyConnection, candidates: Sequence[Mapping[str, Any]]) -> int:
    """Remove the candidates' rows (one transaction per asset); returns the rows freed."""
    freed = 0
    by_asset: dict[str, list[int]] = {}
    for c in candidates:
        by_asset.setdefault(c["asset"], []).append(c["version"])
    for asset, found in by_asset.items():
        freed += wh.drop_versions(con, asset, found, "vacuumed", "vacuum", reason="retention")
    return freed


def diff_pairs(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    keys: Sequence[str],
    base: str | None = None,
    target: str | None = None,
    branch: str | None = None,
) -> dict[str, tuple[int, int]]:
    """partition -> (base version, target version) to compare.

    By default: published vs the newest held or parallel candidate when there is one (in a `branch`: the
    branch's version), else the previous version vs the published one (what the last publish changed).
    `base`/`target` may name a version number (with one partition) or one of ``published``, ``previous``,
    ``held`` (in a branch: the branch's version).
    """
    if ((base or "").isdigit() or (target or "").isdigit()) and len(keys) != 1:
        raise HistoryError("version numbers name one version, so give one --partition")
    published = published_versions(con, asset)
    pairs = {}
    waiting: dict[str, int] = {}  # partition -> its newest held or parallel candidate newer than published
    if branch is not None:
        waiting = {k: v for k, (v, _, _) in catalog.branch_heads(con, branch).get(asset, {}).items()}
        if not waiting:
            raise HistoryError(f"branch {branch} has no version of {asset}")
    else:
        for status in ("held", "candidate"):
            for k, v in catalog.newest_pending(con, asset, status).items():
                waiting[k] = max(v, waiting.get(k, 0))
    for key in keys:
        pending = waiting.get(key)
        chosen = {}
        for side, name in (("base", base), ("target", target)):
            default = (
                ("published" if pending else "previous") if side == "base" else ("held" if pending else "published")
            )
            try:
                chosen[side] = _version_named(con, asset, key, name or default, published.get(key), pending)
            except HistoryError as e:
                if name:  # the user named it: say which option to fix
                    raise HistoryError(f"--{side}: {e}") from None
                raise
        pairs[key] = (chosen["base"], chosen["target"])
    return pairs


def _version_named(con, asset: str, key: str, name: str, published: int | None, pending: int | None) -> int:
    if name.isdigit():
        found = catalog.version_info(con, asset, key, int(name))
        if found is None:
            raise HistoryError(f"version {name} is not a version of {asset} [{key}]")
        if found[0] in ("vacuumed", "abandoned", "discarded"):
            raise HistoryError(f"version {name} of {asset} [{key}] is {found[0]}: its rows are gone")
        return int(name)
    if name == "published" and published is not None:
        return published
    if name == "held" and pending is not None:
        return pending
    if name == "previous" and published is not None:
        earlier = catalog.previous_versions(con, asset, [key]).get(key)
        if earlier is not None and earlier[1] in catalog.ROLLBACK_TARGETS:
            return earlier[0]
    if name not in ("published", "previous", "held"):
        raise HistoryError(f"{name!r} is not a version: use a number, published, previous or held")
    raise HistoryError(f"{asset} [{key}] has no {name} version to compare")


def diff_versions(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    grain: Sequence[str],
    scheme: Scheme,
    metrics: Mapping[str, str],
    pairs: Mapping[str, tuple[int, int]],
) -> tuple[diff.DiffResult, list[changes.MetricChange]]:
    """Keyed diff of the base and target versions of partition -> (base, target) `pairs`, and every metric
    before/after per partition."""
    values = {hashable(scheme.value(k)): k for k in pairs}
    wh.version_view(con, asset, "_bfa_diff_base", [b for b, _ in pairs.values()])
    wh.version_view(con, asset, "_bfa_diff_target", [t for _, t in pairs.values()])
    result = diff.diff_relations(con, "_bfa_diff_base", "_bfa_diff_target", list(grain))

    def keyed(relation: str) -> dict[str, dict[str, Any]]:
        found = audit.metric_values_of(con, metrics, scheme.expr(), relation)
        return {values[d]: m for d, m in found.items() if d in values}

    return result, changes.metric_changes(asset, keyed("_bfa_diff_base"), keyed("_bfa_diff_target"))
