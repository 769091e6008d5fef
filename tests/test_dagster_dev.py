"""A backfill of every reference asset over January 2025, launched on a real `dagster dev` through the
GraphQL API the UI uses: the daemon runs it with the shipped instance config (one DuckDB writer pool)."""

from pathlib import Path

import dagster_helpers as helpers
import duckdb
import pytest

from backfill_assets import audit
from backfill_assets import warehouse as bfa
from product_analytics import tables

ROOT = Path(__file__).resolve().parents[1]
DAILY = ["raw_events", "events_clean", "sessions", "daily_active_users", "funnel_daily", "revenue_daily"]
RANGES = {
    **{a: ("2025-01-01", "2025-01-31") for a in DAILY},
    # Only the weeks and months that lie wholly inside January.
    "weekly_active_users": ("2025-01-06", "2025-01-20"),
    "retention_cohorts": ("2025-01-06", "2025-01-20"),
    "monthly_revenue": ("2025-01-01", "2025-01-01"),
}
LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("dagster_dev")
    with helpers.dagster_dev(tmp_path, helpers.dagster_env(tmp_path)) as dev:
        yield dev


def _launch(url: str, title: str, ranges: dict[str, tuple[str, str]]) -> str:
    params = {
        "title": title,
        "partitionsByAssets": [
            {"assetKey": {"path": [asset]}, "partitions": {"range": {"start": start, "end": end}}}
            for asset, (start, end) in ranges.items()
        ],
    }
    launched = helpers.graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _messages(url: str, runs: list[dict]) -> list[str]:
    return [e.get("message") or "" for r in runs for e in helpers.run_events(url, r["runId"])]


def test_ui_backfill_of_all_assets_completes_with_green_checks_and_no_lock_errors(dagster_dev):
    url, db = dagster_dev.url, dagster_dev.db
    backfill = helpers.wait_for_backfill(url, _launch(url, "January rebuild", RANGES))

    runs = backfill["runs"]
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
    assert runs and all(r["status"] == "SUCCESS" for r in runs), runs
    messages = _messages(url, runs)
    everything = "\n".join(messages) + dagster_dev.log()
    assert "Could not set lock" not in everything
    check_messages = [m for m in messages if m.startswith("Asset check")]
    # The one warning: events_clean's last days are provisional (raw February 1-3 is not published).
    warned = [m for m in check_messages if "did not pass" in m]
    assert len(warned) == 1 and "'inputs_complete' on 'events_clean'" in warned[0], warned
    checks_per_asset = {s.name: len(audit.check_names(s)) for s in tables.SPECS}
    assert sum(" passed." in m for m in check_messages) == sum(checks_per_asset[a] for a in RANGES) - 1

    con = duckdb.connect(str(db), read_only=True)
    try:
        published = dict(con.execute("SELECT asset, count(*) FROM bfa.published GROUP BY 1").fetchall())
        actions = {a for (a,) in con.execute("SELECT DISTINCT action FROM bfa.ledger").fetchall()}
    finally:
        con.close()
    assert published == {
        **{a: 31 for a in DAILY},
        "weekly_active_users": 3,
        "retention_cohorts": 3,
        "monthly_revenue": 1,
    }
    assert actions == {"publish"}


def test_two_overlapping_backfills_at_once_finish_and_the_later_publish_wins(dagster_dev):
    url, db = dagster_dev.url, dagster_dev.db
    first = _launch(url, "first half", dict.fromkeys(DAILY, ("2025-01-01", "2025-01-20")))
    second = _launch(url, "second half", dict.fromkeys(DAILY, ("2025-01-10", "2025-01-31")))
    backfills = [helpers.wait_for_backfill(url, first), helpers.wait_for_backfill(url, second)]

    runs = [r for b in backfills for r in b["runs"]]
    assert all(b["status"] in ("COMPLETED", "COMPLETED_SUCCESS") for b in backfills), backfills
    assert runs and all(r["status"] == "SUCCESS" for r in runs), runs
    assert "Could not set lock" not in "\n".join(_messages(url, runs)) + dagster_dev.log()
    con = duckdb.connect(str(db), read_only=True)
    try:
        # For every partition both backfills wrote, the ledger orders the two publishes and what consumers read
        # is the later one's version, with the rows it recorded.
        later = con.execute(
            """
            SELECT asset, key, arg_max(version, entry_id), count(*) FROM (
                SELECT asset, entry_id, unnest(partition_keys) AS key, unnest(versions) AS version FROM bfa.ledger
                WHERE action = 'publish' AND run_id IN (SELECT unnest(?))
            ) GROUP BY ALL
            """,
            [[r["runId"] for r in runs]],
        ).fetchall()
        published = {
            (a, k): v for a, k, v in con.execute("SELECT asset, partition_key, version FROM bfa.published").fetchall()
        }
        hashes = dict(con.execute("SELECT version, content_hash FROM bfa.versions").fetchall())
        actual = {a: bfa.version_stats(con, a, [v for (x, _), v in published.items() if x == a]) for a in DAILY}
    finally:
        con.close()
    overlap = [(a, k, v) for a, k, v, n in later if n == 2]
    assert len(overlap) == len(DAILY) * 11  # 2025-01-10..2025-01-20
    assert all(published[(a, k)] == v for a, k, v, _ in later)
    assert all(actual[a][v][1] == hashes[v] for a, _, v in overlap)


def test_launch_runs_the_refunds_fix_brief_end_to_end(dagster_dev):
    url, env = dagster_dev.url, dagster_dev.env
    upstream = "key:raw_events or key:events_clean"
    helpers.run_cli(env, "materialize", "--select", upstream, "--from", "2025-01-01", "--to", "2025-03-31")

    brief = "backfills/refunds-fix-2025q1.yaml"
    out = helpers.run_cli(env, "launch", brief, "--url", url, "--wait", "--poll-seconds", "1", timeout_s=600)
    assert "Preflight" not in out  # a passing preflight launches without ceremony
    backfill_id = out.split("Launched backfill ", 1)[1].split()[0]
    assert f"{url}/runs/b/{backfill_id}" in out
    assert "[##############################] 93/93 partitions published, 0 failed" in out
    assert "revenue_daily                90        90     0      0" in out
    assert "monthly_revenue               3         3     0      0" in out
    backfill = helpers.graphql(url, helpers.BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
    assert backfill["title"] == "[refunds-fix-2025q1] Net revenue with refunds joined, Q1 2025"
    assert {"key": "backfill_assets/brief", "value": "refunds-fix-2025q1"} in backfill["tags"]
    assert "| revenue_daily | selected | 2025-01-01..2025-03-31 (90) |" in backfill["description"]


OBSERVATIONS = """
query($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetObservations(limit: 5) { description } }
  }
}"""


def test_the_refunds_fix_brief_in_a_branch_changes_nothing_until_its_reviewer_approves_and_it_publishes(dagster_dev):
    """After the refunds-fix test above published the fix, the same brief runs again into a branch: consumers keep
    reading exactly the versions published before (their ids), the consumers show the maintenance notice, a publish
    without the reviewer's approval is refused, and after it revenue_daily and monthly_revenue move together."""
    url, env = dagster_dev.url, dagster_dev.env
    with duckdb.connect(str(dagster_dev.db), read_only=True) as con:
        before = {a: bfa.published_partitions(con, a) for a in ("revenue_daily", "monthly_revenue")}
    assert len(before["revenue_daily"]) == 90 and len(before["monthly_revenue"]) == 3
    brief = "backfills/refunds-fix-2025q1.yaml"
    out = helpers.run_cli(env, "launch", brief, "--url", url, "--branch", "refunds-q1", "--wait", "--poll-seconds",
                          "1", timeout_s=600)  # fmt: skip
    assert "into branch refunds-q1" in out and "Maintenance notice on 3 assets" in out, out
    assert "asset                  targeted    staged  held failed" in out, out
    assert "revenue_daily                90        90     0      0" in out and "Staged in branch refunds-q1" in out
    with duckdb.connect(str(dagster_dev.db), read_only=True) as con:
        assert {a: bfa.published_partitions(con, a) for a in before} == before  # not a pointer moved
    notices = helpers.graphql(url, OBSERVATIONS, {"path": ["consumers", "finance_revenue_dashboard"]})
    assert "branch refunds-q1" in notices["assetOrError"]["assetObservations"][0]["description"]

    refused = helpers.run_cli_fails(env, "branch", "publish", "refunds-q1")
    assert "must be approved by its reviewer head-of-data@example.com" in refused
    assert "may approve it, not ana" in helpers.run_cli_fails(
        env, "branch", "approve", "refunds-q1", "--by", "ana", "--reason", "fine"
    )
    helpers.run_cli(env, "branch", "approve", "refunds-q1", "--by", "head-of-data@example.com", "--reason", "ok")
    out = helpers.run_cli(env, "branch", "publish", "refunds-q1", "--by", "team:finance-analytics")
    assert "revenue_daily: 2025-01-01..2025-03-31 (90 partitions)" in out, out
    assert "monthly_revenue: 2025-01-01..2025-03-01 (3 partitions)" in out, out
    with duckdb.connect(str(dagster_dev.db), read_only=True) as con:
        after = {a: bfa.published_partitions(con, a) for a in before}
        entries = con.execute(
            "SELECT DISTINCT l.asset, h.changed_at FROM bfa.ledger l JOIN bfa.pointer_history h USING (entry_id) "
            "WHERE l.action = 'publish' AND l.params ->> 'branch' = 'refunds-q1'"
        ).fetchall()
    for asset in before:
        assert {k: v for k, (v, _, _) in after[asset].items()}.keys() == before[asset].keys()
        assert all(after[asset][k][0] != before[asset][k][0] for k in before[asset])  # every pointer moved ...
        assert {k: h for k, (_, _, h) in after[asset].items()} == {k: h for k, (_, _, h) in before[asset].items()}
    assert sorted(a for a, _ in entries) == ["monthly_revenue", "revenue_daily"]
    assert len({at for _, at in entries}) == 1  # ... in one pointer change (one timestamp for both tables)
