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
Q1 = ("2025-01-01", "2025-03-31")
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
    """`dagster dev` on the reference pipeline with a bug switch in monthly_revenue (off unless `bug_switch` exists)."""
    tmp_path = tmp_path_factory.mktemp("dagster_dev")
    env = {**helpers.dagster_env(tmp_path), "BACKFILL_ASSETS_MONTHLY_BUG": str(tmp_path / "monthly-bug")}
    command = (str(helpers.BIN / "dagster"), "dev", "-f", "tests/reference_with_a_bug_switch.py")
    with helpers.dagster_dev(tmp_path, env, command=command) as dev:
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


def consumers_views(db: Path) -> dict[str, str]:
    """An md5 of each view consumers read in main (every row, in order), in DuckDB's SQL, not the library's."""
    with duckdb.connect(str(db), read_only=True) as con:
        views = [
            r[0]
            for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal"
            ).fetchall()
        ]
        return {
            v: con.execute(
                f"SELECT md5(coalesce(string_agg(t::VARCHAR, chr(10) ORDER BY t::VARCHAR), '')) FROM main.{v} t"
            ).fetchone()[0]
            for v in views
        }


def monthly_sums(db: Path) -> tuple[dict, dict]:
    """(month -> net revenue of monthly_revenue, month -> the sum of revenue_daily's days), as consumers read them."""
    with duckdb.connect(str(db), read_only=True) as con:
        monthly = dict(
            con.execute("SELECT month_start, sum(net_revenue_usd) FROM main.monthly_revenue GROUP BY 1").fetchall()
        )
        days = dict(con.execute(
            "SELECT date_trunc('month', revenue_date)::DATE, sum(net_revenue_usd) FROM main.revenue_daily "
            "WHERE revenue_date < '2025-04-01' GROUP BY 1"
        ).fetchall())  # fmt: skip
    return {m: v for m, v in monthly.items() if m in days}, days


def test_the_refunds_fix_in_a_branch_with_a_failing_month_changes_nothing_until_fixed_reviewed_and_published(
    dagster_dev,
):
    """The refunds-fix brief into a branch over the numbers from before the fix, with monthly_revenue's new code
    adding a cent (its `reconciled` check fails): every consumers' view hashes as before, and publish is refused,
    saying why. Fixed and re-run in the branch, approved by the brief's reviewer (and nobody else) and published:
    revenue_daily and monthly_revenue change in one pointer change, every other view not at all."""
    url, env = dagster_dev.url, dagster_dev.env
    legacy = str(ROOT / "product_analytics" / "legacy.py")
    helpers.run_cli(env, "materialize", "-f", legacy, "--select", "key:revenue_daily+", "--from", Q1[0], "--to", Q1[1])
    before = consumers_views(dagster_dev.db)
    monthly_before, days_before = monthly_sums(dagster_dev.db)
    with duckdb.connect(str(dagster_dev.db), read_only=True) as con:
        legacy_february = bfa.published_partitions(con, "monthly_revenue")["2025-02-01"][2]
    assert monthly_before == days_before and len(days_before) == 3  # the legacy numbers, consistent

    bug_switch = Path(env["BACKFILL_ASSETS_MONTHLY_BUG"])
    bug_switch.touch()
    brief = "backfills/refunds-fix-2025q1.yaml"
    notes = dagster_dev.db.parent / "notes"
    out = helpers.run_cli_fails(
        env, "launch", brief, "--url", url, "--branch", "refunds-q1", "--out", str(notes), "--wait",
        "--poll-seconds", "1", timeout_s=600,
    )  # fmt: skip
    assert "into branch refunds-q1" in out and "Maintenance notice on 3 assets" in out, out
    before_the_run = (notes / "refunds-fix-2025q1" / "before.md").read_text()
    for says in ("stages in branch refunds-q1", "after review by head-of-data@example.com",
                 "| revenue_daily | selected | 2025-01-01..2025-03-31 (90) |", "- team:finance"):  # fmt: skip
        assert says in before_the_run, before_the_run
    assert "revenue_daily                90        90     0      0" in out, out
    assert "monthly_revenue               3         0     3" in out, out
    assert consumers_views(dagster_dev.db) == before  # not a row consumers read has changed
    notices = helpers.graphql(url, OBSERVATIONS, {"path": ["consumers", "finance_revenue_dashboard"]})
    assert "branch refunds-q1" in notices["assetOrError"]["assetObservations"][0]["description"]
    refused = helpers.run_cli_fails(env, "branch", "publish", "refunds-q1")
    assert "monthly_revenue 2025-01-01..2025-03-01 (3 partitions) is held or still running in the branch" in refused
    assert "must be approved by its reviewer head-of-data@example.com" in refused, refused
    assert consumers_views(dagster_dev.db) == before

    bug_switch.unlink()  # the fix, re-run in the branch as the refusal says
    helpers.run_cli(
        env, "materialize", "--select", "monthly_revenue", "--from", Q1[0], "--to", Q1[1], "--branch", "refunds-q1"
    )
    assert "may approve it, not ana" in helpers.run_cli_fails(
        env, "branch", "approve", "refunds-q1", "--by", "ana", "--reason", "fine"
    )
    helpers.run_cli(env, "branch", "approve", "refunds-q1", "--by", "head-of-data@example.com", "--reason", "deltas ok")
    assert consumers_views(dagster_dev.db) == before
    out = helpers.run_cli(env, "branch", "publish", "refunds-q1", "--by", "team:finance-analytics")
    assert "revenue_daily: 2025-01-01..2025-03-31 (90 partitions)" in out, out
    assert "monthly_revenue: 2025-01-01..2025-03-01 (3 partitions)" in out, out

    after = consumers_views(dagster_dev.db)
    changed = sorted(v for v in before if after[v] != before[v])
    assert changed == ["_bfa_pointer", "monthly_revenue", "revenue_daily"], changed
    monthly_after, days_after = monthly_sums(dagster_dev.db)
    assert monthly_after == days_after  # the fixed months are their fixed days
    assert all(days_after[m] < days_before[m] for m in days_before)  # refunds now subtracted
    with duckdb.connect(str(dagster_dev.db), read_only=True) as con:
        moves = con.execute(
            "SELECT l.asset, h.changed_at, count(*) FROM bfa.ledger l JOIN bfa.pointer_history h USING (entry_id) "
            "WHERE l.action = 'publish' AND (l.params ->> 'branch') = 'refunds-q1' GROUP BY ALL"
        ).fetchall()
    assert sorted((a, n) for a, _, n in moves) == [("monthly_revenue", 3), ("revenue_daily", 90)]
    assert len({at for _, at, _ in moves}) == 1  # one pointer change: one timestamp for both tables

    # What Dagster's GraphQL says was last materialized is what consumers read: after the publish and after a
    # rollback, both made outside any run (runless events, run id "").
    def newest(asset: str) -> tuple[str, str, str]:
        m = helpers.latest_asset_events(url, asset)["materialization"]
        return m["partition"], m["metadata"]["content_hash"], m["runId"]

    with duckdb.connect(str(dagster_dev.db), read_only=True) as con:
        hashes = {k: h for k, (_, _, h) in bfa.published_partitions(con, "monthly_revenue").items()}
    partition, content_hash, run_id = newest("monthly_revenue")
    assert (content_hash, run_id) == (hashes[partition], "")
    helpers.run_cli(env, "rollback", "monthly_revenue", "--partition", "2025-02-01", "--reason", "numbers questioned")
    assert newest("monthly_revenue") == ("2025-02-01", legacy_february, "")
