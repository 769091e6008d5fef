"""Launch a brief's backfill on a running Dagster (its GraphQL API, as the UI does) and follow it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import duckdb

from . import catalog, planning
from .audit import plural
from .factory import BRANCH_TAG, BRIEF_TAG, OWNER_TAG

DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

_LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""
_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status title numPartitions
      tags { key value }
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
          }
          ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed }
        }
      }
      runs(limit: 1000) { runId status }
    }
    ... on BackfillNotFoundError { message }
    ... on PythonError { message }
  }
}"""


_OBSERVE = """
mutation($params: ReportRunlessAssetEventsParams!) {
  reportRunlessAssetEvents(eventParams: $params) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""


class DagsterError(RuntimeError):
    """Dagster could not be reached or refused the request; the message says which and why."""


def graphql(url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise DagsterError(f"--url {url!r} must start with http:// or https://")
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        f"{url.rstrip('/')}/graphql", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            payload = json.load(response)
    except urllib.error.HTTPError as e:
        raise DagsterError(f"{url} answered HTTP {e.code} ({e.reason}); is it a Dagster webserver?") from None
    except ValueError:  # not JSON
        raise DagsterError(f"{url}/graphql did not answer with JSON; is it a Dagster webserver?") from None
    except (urllib.error.URLError, OSError) as e:
        raise DagsterError(
            f"no Dagster answering at {url} ({getattr(e, 'reason', e)}); start it with make dev"
        ) from None
    if payload.get("errors"):
        raise DagsterError(f"Dagster refused the request: {payload['errors'][0].get('message')}")
    return payload["data"]


def backfill_params(brief: dict[str, Any], plan: planning.Plan, branch: str | None = None) -> dict[str, Any]:
    """LaunchBackfillParams covering the blast radius: exact partition ranges per asset; with `branch`, every run
    stages into it."""
    return {
        "title": f"[{brief['id']}] {brief['title']}",
        "description": describe(brief, plan),
        "tags": [
            {"key": BRIEF_TAG, "value": str(brief["id"])},
            {"key": "backfill_assets/risk", "value": brief["risk"]},
            {"key": OWNER_TAG, "value": str(brief["owner"])},
            *([{"key": BRANCH_TAG, "value": branch}] if branch else []),
        ],
        # An unpartitioned asset is targeted whole (no partitions); Dagster runs it after its parents.
        "partitionsByAssets": [
            {
                "assetKey": {"path": impact.asset.split("/")},
                "partitions": {"ranges": [{"start": a, "end": b} for a, b in impact.ranges]}
                if impact.partitioned
                else None,
            }
            for impact in plan.tables
            if impact.ranges or not impact.partitioned
        ],
    }


def describe(brief: dict[str, Any], plan: planning.Plan) -> str:
    """The brief and its blast radius as markdown: what the backfill's page in the UI shows."""
    lines = [
        f"**{brief['title']}** — {brief['risk']}, owner {brief['owner']}, reviewed by {brief['reviewer']}",
        "",
        str(brief["reason"]).strip(),
        "",
        "| asset | why | partitions | rows now |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {i.asset} | {i.reason} | {', '.join(i.partitions)}"
        + (f" ({i.partition_count}) | {i.rows_published or 0:,} |" if i.partitioned else " | - |")
        for i in plan.tables
    ]
    if plan.consumers:
        lines += ["", "Consumers: " + "; ".join(f"{c.label} ({', '.join(c.owners)})" for c in plan.consumers)]
    lines += ["", f"{scope(plan)}. Rollback: {str(brief['rollback']).strip()}"]
    return "\n".join(lines)


def before_the_run(brief: dict[str, Any], plan: planning.Plan, backfill_id: str, branch: str | None) -> str:
    """The change note "before the run", in markdown: what will change, when, and whom to tell."""
    seconds = plan.totals()["estimated_seconds"]
    took = (
        f"estimated {planning.duration(seconds)} of transform + audit time"
        if seconds is not None
        else "no estimate yet (no earlier runs)"
    )
    if branch:
        when = (
            f"Nothing consumers read changes while it runs: it stages in branch {branch}, which publishes every "
            f"table at once after review by {brief['reviewer']}"
        )
    else:
        when = "Each table changes as its runs pass their checks"
    tell = sorted({*plan.notify(), *map(str, brief.get("stakeholders") or [])})
    lines = [
        f"# Before the run: {brief['title']} ({brief['id']})",
        "",
        f"**When:** Dagster backfill {backfill_id}, launched {catalog.now():%Y-%m-%d %H:%M} UTC; {took}. {when}.",
        "",
        describe(brief, plan),
        "",
        "## Expected changes",
        "",
        *[f"- {e['asset']}.{e['metric']}: within ±{float(e['max_relative_change']):.0%}"
          for e in brief.get("expected_changes") or []],
        "",
        "## Tell",
        "",
        *[f"- {who}" for who in tell],
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def scope(plan: planning.Plan) -> str:
    """ "4 partitions of 2 assets and 1 unpartitioned asset": what a launch targets."""
    t = plan.totals()
    out = f"{plural(t['partitions'], 'partition')} of {plural(t['assets'] - t['unpartitioned'], 'asset')}"
    return out + (f" and {plural(t['unpartitioned'], 'unpartitioned asset')}" if t["unpartitioned"] else "")


def launch(url: str, brief: dict[str, Any], plan: planning.Plan, branch: str | None = None) -> str:
    result = graphql(url, _LAUNCH, {"params": backfill_params(brief, plan, branch)})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise DagsterError(f"Dagster did not launch the backfill: {result.get('message', result['__typename'])}")
    return result["backfillId"]


def announce(url: str, plan: planning.Plan, text: str) -> int:
    """Report `text` to Dagster as an observation of every table and consumer of the plan (what their pages show
    while a branch is open); returns how many assets were told."""
    for impact in plan.impacts:
        params = {"eventType": "ASSET_OBSERVATION", "assetKey": {"path": impact.asset.split("/")}, "description": text}
        result = graphql(url, _OBSERVE, {"params": params})["reportRunlessAssetEvents"]
        if result["__typename"] != "ReportRunlessAssetEventsSuccess":
            raise DagsterError(f"Dagster did not record the notice on {impact.asset}: {result.get('message')}")
    return len(plan.impacts)


def status(url: str, backfill_id: str) -> dict[str, Any]:
    result = graphql(url, _STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if result["__typename"] != "PartitionBackfill":
        raise DagsterError(f"no backfill {backfill_id!r} on {url}: {result.get('message', result['__typename'])}")
    return result


def progress(state: dict[str, Any]) -> tuple[int, int, int]:
    """(partitions done, failed, targeted) over every asset of the backfill; an unpartitioned asset counts as one."""
    per_asset = [counts(c) for c in (state.get("assetBackfillData") or {}).get("assetBackfillStatuses") or []]
    return tuple(sum(c[i] for c in per_asset) for i in range(3))


def counts(status: dict[str, Any]) -> tuple[int, int, int]:
    if "numPartitionsTargeted" in status:
        return status["numPartitionsMaterialized"], status["numPartitionsFailed"], status["numPartitionsTargeted"]
    return int(bool(status.get("materialized"))), int(bool(status.get("failed"))), 1


def ledger_summary(con: duckdb.DuckDBPyConnection | None, run_ids: list[str]) -> dict[str, dict[str, int]]:
    """asset -> {published, held} partitions, from the ledger entries of these runs (staged in a branch counts as
    published: it passed)."""
    if con is None or not run_ids:
        return {}
    summary: dict[str, dict[str, int]] = {}
    for asset, action, n in catalog.run_outcomes(con, run_ids):
        summary.setdefault(asset, {"published": 0, "held": 0})["held" if action == "hold" else "published"] += int(n)
    return summary
