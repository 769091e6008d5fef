"""The used-by flows in a real browser: Dagster's UI on a real `dagster dev`, driven by Playwright with Debian's
Chromium (`apt-get install chromium`; `make test` installs it when it is missing and make runs as root).

One `dagster dev` serves the whole module, on a warehouse seeded with the code from before the refunds fix
(product_analytics/legacy.py) over Q1 2025. The steps run in order and build on each other:

1. the global asset lineage shows every table and consumer, in their groups;
2. the daily assets selected in the graph, *Materialize selected*, a range typed into the launch dialog and
   *Launch backfill* clicked: the backfill completes;
3. every check of every daily asset is green on its Checks tab (but the warning that events_clean's newest days
   are provisional), and DuckDB serves the published rows;
4. *Execute all* on a Checks tab runs the checks alone against the published data, and they pass (the same
   warning aside);
5. a broken source day: the re-run is held on `complete`, its figures and sample rows are in the UI, and the
   published data is byte-for-byte what it was;
6. revenue_daily's lineage shows its upstream, downstream and consumers;
7. a backfill in a branch, all by clicking: revenue_daily and monthly_revenue selected in the graph, February in
   the launch dialog and the run tag `backfill_assets/branch` added under its *Tags*; consumers read exactly what
   they read before, the consumer's Events tab shows the maintenance notice naming the branch, the job
   branch_decision publishes it from its Launchpad, and consumers then read the fixed February (refunds
   subtracted) whose content hash revenue_daily's and monthly_revenue's pages show;
8. the refunds-fix brief launched with the CLI over all of Q1 (February is fixed already: January and March
   still change): its backfill's page shows the blast radius, and the change note of the publish renders on
   revenue_daily's page;
9. one day of the hourly events_hourly chosen in the launch dialog: one run publishes its 24 distinct hours,
   each hour's events as events_clean has them;
10. revenue_by_region (day x region), January and the region emea chosen in the launch dialog: one run, EMEA's
   January now subtracts refunds, and every other day and region is byte-for-byte what it was.

Screenshots of every step go to $BACKFILL_ASSETS_E2E_ARTIFACTS (or a pytest temporary directory), plus one of
the page as it was when a step failed.
"""

import os
import re
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_helpers import (
    BACKFILL,
    ROOT,
    assert_idle,
    dagster_dev,
    dagster_env,
    graphql,
    latest_asset_events,
    run_cli,
    run_events,
    wait_for_backfill,
    wait_for_run,
)
from playwright.sync_api import Page, expect, sync_playwright

import backfill_assets as bfa
from backfill_assets import warehouse as wh
from product_analytics.tables import SPECS, build_assets

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("BACKFILL_ASSETS_CHROMIUM", "/usr/bin/chromium")
# The machine's network is closed: no QUIC, no background fetches, no component updates, no sync.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
UI_TIMEOUT_MS = 30_000

SPEC = {s.name: s for s in SPECS}
DAILY = ["raw_events", "events_clean", "sessions", "daily_active_users", "funnel_daily", "revenue_daily"]
# Every asset's checks, as the definitions declare them (the UI must show the same).
CHECKS = {
    a.key.path[-1]: sorted(k.name for k in a.check_keys) for a in build_assets() if isinstance(a, dg.AssetsDefinition)
}
APRIL = [str(date(2025, 4, 1) + timedelta(days=i)) for i in range(7)]
BROKEN_DAY = "2025-04-03"
BRIEF = "refunds-fix-2025q1"
SEEDED = ("2025-01-01", "2025-03-31")  # the brief's scope
FEBRUARY = [str(date(2025, 2, 1) + timedelta(days=i)) for i in range(28)]  # still the legacy code's data at step 7
HOURLY_DAY = "2025-01-05"
JANUARY = ("2025-01-01", "2025-01-31")
REGION_OF = {"USD": "americas", "EUR": "emea", "GBP": "emea", "JPY": "apac"}  # the test's own copy
BRANCH_TAG = "backfill_assets/branch"  # the run tag that stages a run's versions into a branch
BRANCH = "feb-refunds"
PUBLISHER = "ana"
CONSUMER = "consumers/finance_revenue_dashboard"  # reads revenue_daily and monthly_revenue
# The columns consumers read, in a fixed order (the views' rows compared whole, before and after).
REVENUE_COLUMNS = "currency, purchases, refunds, gross_revenue_usd, refunds_usd, net_revenue_usd"

RECENT_RUNS = """
query { runsOrError(limit: 20) { ... on Runs { results { runId } } } }"""


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """`dagster dev` on a warehouse seeded over Q1 2025 by the code from before the refunds fix."""
    tmp = tmp_path_factory.mktemp("e2e")
    env = dagster_env(tmp)
    legacy = str(ROOT / "product_analytics" / "legacy.py")
    upstream = "key:raw_events or key:events_clean or key:revenue_daily+ or key:revenue_by_region"
    run_cli(env, "materialize", "-f", legacy, "--select", upstream, "--from", SEEDED[0], "--to", SEEDED[1])
    with dagster_dev(tmp, env) as running:
        graphql(running.url, "mutation { setNuxSeen }")  # no "join the community" dialog over the pages
        yield running


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    path = Path(os.environ.get("BACKFILL_ASSETS_E2E_ARTIFACTS") or tmp_path_factory.mktemp("e2e_artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `sudo apt-get install chromium` (`make test` does as root)"
            " or set BACKFILL_ASSETS_CHROMIUM"
        )
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, artifacts, request):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            page.screenshot(path=artifacts / f"failed-{request.node.name}.png", animations="disabled")
        context.close()


@pytest.fixture(scope="module")
def state() -> dict:
    """What one step leaves for the next (the steps run in file order)."""
    return {}


# --- helpers ---------------------------------------------------------------------------------------


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=artifacts / f"{name}.png", animations="disabled")  # dialogs fully faded in


def graph_nodes(page: Page):
    """The asset nodes of the graph on the page (their names, middle-truncated when the graph is zoomed out)."""
    return page.locator("foreignObject [class*='AssetNode_assetName']")


def shown_as(displayed: str, name: str) -> bool:
    """Whether a node label is `name`, possibly middle-truncated (e.g. 'weekly_acti…_users')."""
    if "…" not in displayed:
        return displayed == name
    head, tail = displayed.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def node(page: Page, name: str):
    return page.locator("foreignObject").get_by_text(name, exact=True)


def expect_graph(page: Page, names: set[str]) -> None:
    """Wait (bounded) until the graph shows exactly the asset nodes `names`."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while (shown := sorted(graph_nodes(page).all_inner_texts())) != sorted(names):
        assert time.monotonic() < deadline, f"the graph shows {shown}, not {sorted(names)}"
        page.wait_for_timeout(250)


def open_global_lineage(page: Page, url: str) -> None:
    page.set_viewport_size({**VIEWPORT, "height": 1300})  # the graph draws the nodes in view only
    page.goto(f"{url}/assets")
    page.get_by_role("link", name="View lineage").click()
    expect(page.get_by_text("Global asset lineage", exact=True)).to_be_visible()
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.get_by_role("button", name="panel_show_right", exact=True).click()  # the asset tree: the graph only


def launch_dialog(page: Page, url: str, asset: str):
    """The launch dialog of `asset`, opened by *Materialize…* on its page (a pop-over inside it, such as a
    dimension's key list, is a dialog too: this is the one that names the asset)."""
    page.goto(f"{url}/assets/{asset}")
    page.get_by_role("button").filter(has_text=re.compile("^Materialize…$")).click()
    dialog = page.get_by_role("dialog").filter(has_text=f"Launch runs to materialize {asset}")
    expect(dialog).to_be_visible()
    return dialog


def choose_partitions(dialog, selection: str, expected: str | None = None) -> None:
    """Type a partition selection into the launch dialog, looking at all partitions, not the last 90 days.
    `expected`: the partition count the dialog then shows (it shows none for assets partitioned differently, e.g.
    daily and monthly: it then picks the upstream asset's partitions only)."""
    window = dialog.get_by_role("button", name=re.compile(r"^(Last 90 days|All time)\b"))
    expect(window).to_be_visible()
    if window.inner_text().strip() != "All time":
        dialog.get_by_role("button", name="Show all partitions").click()
        expect(window).to_have_text("All time")
    box = dialog.get_by_role("textbox").first
    box.fill(selection)
    box.press("Enter")
    if expected is not None:
        expect(dialog.get_by_text(expected, exact=True)).to_be_visible()


def launched_run(page: Page, url: str) -> str:
    """The full id of the run the UI just launched, from its 'Launched run <id>' toast."""
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    expect(toast).to_be_visible()
    short = toast.inner_text().split()[-1]
    [run_id] = [r["runId"] for r in graphql(url, RECENT_RUNS)["runsOrError"]["results"] if r["runId"].startswith(short)]
    return run_id


def launched_backfill(page: Page) -> str:
    """The id of the backfill the UI just created, from its 'Created backfill <id>' toast."""
    toast = page.get_by_text(re.compile(r"^Created backfill [a-z]+$"))
    expect(toast).to_be_visible()
    return toast.inner_text().split()[-1]


def expected_status(asset: str, check: str) -> str:
    """Every check succeeds but one warning: events_clean's newest days are provisional (it reads raw D..D+3 and
    raw April 8-10 is not published), which its inputs_complete reports with WARN severity: "Failed", and
    nothing blocked."""
    return "Failed" if (asset, check) == ("events_clean", "inputs_complete") else "Succeeded"


def check_status(page: Page, check: str):
    """The status line under a check in the Checks tab's list."""
    return page.get_by_title(check, exact=True).first.locator("xpath=following-sibling::span[1]")


def status_tag(page: Page, status: str):
    """A status tag (not a column header or link of the same text)."""
    return page.get_by_text(status, exact=True).and_(page.locator("span"))


def virtual_row(page: Page, link_name: str):
    """The row of one of Dagster's virtualized tables naming `link_name` (a link titled with the full name)."""
    return page.locator("[class*='VirtualizedTable_row']").filter(
        has=page.get_by_role("link").filter(has=page.get_by_title(link_name, exact=True))
    )


def metadata_value(scope, key: str):
    """The value cell of a metadata table's row `key`."""
    row = scope.get_by_role("row").filter(has=scope.page.get_by_role("cell", name=key, exact=True))
    return row.get_by_role("cell").nth(1)


def published_snapshot(con, asset: str) -> dict[str, tuple]:
    """Per partition: (version, recorded rows, recorded hash, rows and hash recomputed from the stored rows)."""
    published = bfa.published_partitions(con, asset)
    actual = wh.version_stats(con, asset, [v for v, _, _ in published.values()])
    return {k: (v, n, h, *actual[v]) for k, (v, n, h) in published.items()}


def consumers_read(con) -> dict[str, list[tuple]]:
    """Every row of the two views the finance dashboard reads, main.revenue_daily and main.monthly_revenue, in one
    order: what consumers read, compared whole."""
    return {
        "revenue_daily": con.execute(
            f"SELECT revenue_date, {REVENUE_COLUMNS} FROM main.revenue_daily ORDER BY ALL"
        ).fetchall(),
        "monthly_revenue": con.execute(
            f"SELECT month_start, {REVENUE_COLUMNS} FROM main.monthly_revenue ORDER BY ALL"
        ).fetchall(),
    }


def fixed_february(con) -> list[tuple]:
    """February as the refunds fix must publish it, from the clean events consumers read (not from the code under
    test): per day and currency, purchases and refunds issued that day, gross, refunds, net = gross - refunds."""
    return con.execute(
        """
        SELECT event_date, currency,
               count(*) FILTER (WHERE event_type = 'purchase'), count(*) FILTER (WHERE event_type = 'refund'),
               coalesce(sum(amount_usd) FILTER (WHERE event_type = 'purchase'), 0)::DECIMAL(18, 2) AS gross,
               coalesce(sum(amount_usd) FILTER (WHERE event_type = 'refund'), 0)::DECIMAL(18, 2) AS refunded,
               gross - refunded
        FROM main.events_clean
        WHERE event_date BETWEEN ? AND ? AND event_type IN ('purchase', 'refund')
        GROUP BY 1, 2 ORDER BY ALL""",
        [FEBRUARY[0], FEBRUARY[-1]],
    ).fetchall()


def in_february(rows: list[tuple], inside: bool = True) -> list[tuple]:
    """The rows of consumers_read (first column the date) whose date is (or is not) in February 2025."""
    return [r for r in rows if (FEBRUARY[0] <= str(r[0]) <= FEBRUARY[-1]) == inside]


def totals(rows: list[tuple]) -> tuple[Decimal, Decimal, Decimal]:
    """Gross, refunds and net revenue (USD) of rows of consumers_read."""
    return tuple(sum((r[i] for r in rows), Decimal(0)) for i in (4, 5, 6))


def set_editor_text(page: Page, editor, text: str) -> None:
    """Replace the text of a CodeMirror editor (the launchpad's config) as a paste would: typed keys would be
    auto-indented and auto-completed."""
    editor.click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.insert_text(text)
    assert editor.evaluate("e => e.CodeMirror.getValue()") == text


# --- the steps -------------------------------------------------------------------------------------


def test_1_global_asset_lineage_shows_the_pipeline_and_its_consumers(dev, page, artifacts):
    open_global_lineage(page, dev.url)

    tables = {s.name for s in SPECS}
    consumers = {c.key.path[-1] for s in SPECS for c in s.consumers}
    nodes = graph_nodes(page)
    expect(nodes).to_have_count(len(tables | consumers))
    shown = nodes.all_inner_texts()
    matches = {d: [n for n in tables | consumers if shown_as(d, n)] for d in shown}
    assert all(len(m) == 1 for m in matches.values()), matches
    assert {m[0] for m in matches.values()} == tables | consumers
    for group in {s.group for s in SPECS} | {"consumers"}:
        expect(page.locator("foreignObject").get_by_text(group, exact=True)).to_be_visible()
    expect(page.get_by_role("button", name=re.compile(rf"Materialize all \({len(tables)}\)"))).to_be_visible()
    shot(page, artifacts, "01-global-asset-lineage")


def test_2_a_backfill_of_the_daily_assets_is_launched_by_clicking_and_completes(dev, page, artifacts, state):
    open_global_lineage(page, dev.url)
    for i, name in enumerate(DAILY):
        node(page, name).click(modifiers=["Shift"] if i else None)
    materialize = page.get_by_role("button", name=re.compile(r"Materialize selected \(6\)"))
    expect(materialize).to_be_visible()
    assert all(name in page.url for name in DAILY)  # the selection is in the URL
    shot(page, artifacts, "02-daily-assets-selected")

    materialize.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Launch runs to materialize 6 assets")
    choose_partitions(dialog, f"[{APRIL[0]}...{APRIL[-1]}]", "7 partitions")
    shot(page, artifacts, "02-launch-dialog")
    dialog.get_by_role("button", name="Launch backfill").click()
    backfill_id = launched_backfill(page)
    state["april_backfill"] = backfill_id

    backfill = wait_for_backfill(dev.url, backfill_id)
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    assert backfill["runs"] and all(r["status"] == "SUCCESS" for r in backfill["runs"]), backfill["runs"]
    assert {"key": "dagster/from_ui", "value": "true"} in backfill["runs"][0]["tags"]

    page.goto(f"{dev.url}/runs/b/{backfill_id}")
    expect(status_tag(page, "Succeeded")).to_be_visible()
    expect(page.get_by_text(f"{APRIL[0]}...{APRIL[-1]}", exact=True)).to_be_visible()
    # Targeted, in progress, succeeded, failed. The five downstream tables start 3 days earlier: events_clean
    # of day D reads raw_events D..D+3, so the new raw days change events_clean's March 29 to 31 too.
    targeted = {name: len(APRIL) if name == "raw_events" else len(APRIL) + 3 for name in DAILY}
    for name, n in targeted.items():
        expect(virtual_row(page, name)).to_have_text(re.compile(rf"{name}\s*100% completed\s*{n}\s*0\s*{n}\s*0"))
    assert len(backfill["runs"]) == 2  # one run per range: single-run backfill policies
    shot(page, artifacts, "02-backfill-succeeded")


def test_3_every_check_is_green_and_duckdb_serves_the_published_rows(dev, page, artifacts, state):
    assert "april_backfill" in state, "step 2 launched no backfill"
    for asset in DAILY:
        page.goto(f"{dev.url}/assets/{asset}?view=checks")
        expect(page.get_by_text(f"Checks ({len(CHECKS[asset])})", exact=True)).to_be_visible()
        for check in CHECKS[asset]:
            expect(check_status(page, check)).to_have_text(expected_status(asset, check))
        shot(page, artifacts, f"03-checks-{asset}")

    backfill = graphql(dev.url, BACKFILL, {"id": state["april_backfill"]})["partitionBackfillOrError"]
    run_ids = [r["runId"] for r in backfill["runs"]]
    assert_idle(dev.url)
    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        for asset in DAILY:
            snapshot = published_snapshot(con, asset)
            assert set(APRIL) <= snapshot.keys(), asset
            versions = [snapshot[day][0] for day in APRIL]
            written = con.execute(
                "SELECT DISTINCT run_id, status FROM bfa.versions WHERE version IN (SELECT unnest(?))", [versions]
            ).fetchall()
            assert {s for _, s in written} == {"published"} and {r for r, _ in written} <= set(run_ids), written
            # What consumers read (the view main.<asset>) is exactly the published versions' rows.
            column = SPEC[asset].partition_column
            served = dict(
                con.execute(
                    f"SELECT {column}::VARCHAR, count(*) FROM main.{asset} WHERE {column} BETWEEN ? AND ? GROUP BY 1",
                    [APRIL[0], APRIL[-1]],
                ).fetchall()
            )
            assert served == {day: snapshot[day][1] for day in APRIL} and all(served.values()), asset
            assert all(snapshot[day][1:3] == snapshot[day][3:5] for day in APRIL), asset  # hashes recomputed
            actions = con.execute(
                "SELECT DISTINCT action FROM bfa.ledger WHERE asset = ? AND run_id IN (SELECT unnest(?))",
                [asset, run_ids],
            ).fetchall()
            assert actions == [("publish",)], (asset, actions)
        provisional = con.execute(
            "SELECT p.partition_key FROM bfa.published p JOIN bfa.versions v USING (version) "
            "WHERE p.asset = 'events_clean' AND len(v.missing_inputs) > 0 ORDER BY 1"
        ).fetchall()
        assert [k for (k,) in provisional] == APRIL[-3:]  # their raw D+1..D+3 is not in yet
    finally:
        con.close()


def test_4_execute_all_runs_the_checks_alone_and_they_pass(dev, page, artifacts):
    assert_idle(dev.url)
    page.goto(f"{dev.url}/assets/events_clean?view=checks")
    page.get_by_role("button", name=re.compile("Execute all")).click()
    run_id = launched_run(page, dev.url)
    shot(page, artifacts, "04-checks-executing")

    run = wait_for_run(dev.url, run_id)
    assert run["status"] == "SUCCESS", run
    assert not run["assetSelection"] and {c["name"] for c in run["assetCheckSelection"]} == set(CHECKS["events_clean"])
    events = run_events(dev.url, run_id)
    assert not [e for e in events if e["__typename"] == "MaterializationEvent"]  # nothing written
    evaluations = {
        e["evaluation"]["checkName"]: e["evaluation"]["success"]
        for e in events
        if e["__typename"] == "AssetCheckEvaluationEvent"
    }
    assert evaluations == {c: expected_status("events_clean", c) == "Succeeded" for c in CHECKS["events_clean"]}

    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        published = len(bfa.published_partitions(con, "events_clean"))
    finally:
        con.close()
    page.reload()
    for check in CHECKS["events_clean"]:
        expect(check_status(page, check)).to_have_text(expected_status("events_clean", check))
    page.get_by_title("reconciled", exact=True).first.click()
    expect(page.get_by_text(re.compile(rf"rules? holds? over {published} partitions")).first).to_be_visible()
    shot(page, artifacts, "04-checks-passed")


def test_5_a_broken_source_day_is_held_and_the_published_data_is_unchanged(dev, page, artifacts):
    assert_idle(dev.url)
    con = duckdb.connect(str(dev.db))
    try:
        before = published_snapshot(con, "events_clean")
        # Half of one raw day lost (a botched load), directly in DuckDB while nothing runs.
        raw_version = bfa.published_partitions(con, "raw_events")[BROKEN_DAY][0]
        con.execute("DELETE FROM bfa.raw_events WHERE _bfa_version = ? AND hash(delivery_id) % 2 = 0", [raw_version])
    finally:
        con.close()

    dialog = launch_dialog(page, dev.url, "events_clean")
    choose_partitions(dialog, BROKEN_DAY, "1 partition")
    dialog.get_by_role("button", name="Launch 1 run").click()
    run_id = launched_run(page, dev.url)
    run = wait_for_run(dev.url, run_id)
    assert run["status"] == "FAILURE", run

    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        after = published_snapshot(con, "events_clean")
        [(held_version, held_rows, held_status)] = con.execute(
            "SELECT version, row_count, status FROM bfa.versions WHERE asset = 'events_clean' AND run_id = ?", [run_id]
        ).fetchall()
        [(action, keys)] = con.execute(
            "SELECT action, partition_keys FROM bfa.ledger WHERE run_id = ?", [run_id]
        ).fetchall()
    finally:
        con.close()
    assert after == before  # every partition: same version, same rows, same content hash
    assert held_status == "held" and (action, keys) == ("hold", [BROKEN_DAY])
    published_rows = before[BROKEN_DAY][1]
    assert held_rows < 0.8 * published_rows
    figures = f"{BROKEN_DAY}: {held_rows} rows vs {published_rows} published, {held_rows / published_rows - 1:+.1%}"

    # The run's page: the failed check with its figures, and the step failure saying nothing was published.
    page.goto(f"{dev.url}/runs/{run_id}")
    expect(page.get_by_text("Check complete failed for materialization of events_clean.")).to_be_visible()
    expect(page.get_by_text(re.compile(r"held, not published: check 'complete' failed")).first).to_be_visible()
    expect(page.get_by_text(re.compile("Published data is unchanged")).first).to_be_visible()
    expect(page.get_by_text(figures).first).to_be_visible()
    page.get_by_text("Check complete failed for materialization of events_clean.").scroll_into_view_if_needed()
    shot(page, artifacts, "05-held-run")

    # The check's execution history: the failed evaluation, its figures and its sample of failing rows.
    page.goto(f"{dev.url}/assets/events_clean?view=checks")
    page.get_by_title("complete", exact=True).first.click()
    page.get_by_role("tab", name="Execution history").click()
    failed = page.get_by_role("row").filter(has_text=figures)
    expect(failed.get_by_text("Failed", exact=True)).to_be_visible()
    shot(page, artifacts, "05-held-check-history")
    failed.get_by_role("button").last.click()
    metadata = page.get_by_role("dialog")
    expect(metadata_value(metadata, "partitions_moved_beyond_tolerance")).to_have_text("1")
    expect(metadata_value(metadata, "rows")).to_have_text(str(held_rows))
    metadata.get_by_text("[Show Markdown]").click()
    sample = page.get_by_role("dialog").filter(has_text="failing_sample").last
    expect(sample.get_by_role("row").filter(has_text=BROKEN_DAY)).to_have_text(
        re.compile(rf"{BROKEN_DAY}\s*row count moved\s*{held_rows}\s*{published_rows}\s*{figures.rsplit(' ', 1)[1]}")
    )
    shot(page, artifacts, "05-held-check-sample")


def test_6_revenue_daily_lineage_shows_upstream_downstream_and_consumers(dev, page, artifacts):
    page.goto(f"{dev.url}/assets/revenue_daily")
    page.get_by_role("tab", name="Lineage").click()
    expect_graph(page, {"events_clean", "revenue_daily", "monthly_revenue", "finance_revenue_dashboard"})
    expect(page.get_by_text("Dashboard", exact=True)).to_be_visible()  # the consumer's kind
    expect(page.locator("foreignObject").get_by_text(re.compile(r"^Loading"))).to_have_count(0)
    expect(page.locator("foreignObject").get_by_text(re.compile(r"\d+ / \d+ Passed")).first).to_be_visible()
    shot(page, artifacts, "06-revenue-daily-lineage")

    page.get_by_role("button", name="Downstream").click()
    expect_graph(page, {"revenue_daily", "monthly_revenue", "finance_revenue_dashboard"})
    page.get_by_role("button", name="Upstream").click()
    expect_graph(page, {"events_clean", "revenue_daily"})
    page.get_by_role("button", name="All", exact=True).click()
    expect_graph(page, {"raw_events", "events_clean", "revenue_daily"})


def test_7_a_backfill_in_a_branch_is_launched_from_the_dialog_announced_and_published_from_the_ui(dev, page, artifacts):
    assert_idle(dev.url)
    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        before = consumers_read(con)
        fixed = fixed_february(con)
    finally:
        con.close()
    # February still holds the legacy code's figures: no refunds, net = gross; the fix subtracts real refunds.
    legacy = in_february(before["revenue_daily"])
    assert len({r[0] for r in legacy}) == len(FEBRUARY)
    assert all(r[3] == 0 and r[5] == 0 and r[6] == r[4] for r in legacy), legacy
    assert {(r[0], r[1]): r[4] for r in legacy} == {(r[0], r[1]): r[4] for r in fixed if r[2]}
    assert totals(fixed)[1] > 0

    # revenue_daily and monthly_revenue selected in the graph (monthly_revenue first: the sidebar a single
    # selection opens would cover it), February typed into the launch dialog, the branch tag added under Tags.
    open_global_lineage(page, dev.url)
    node(page, "monthly_revenue").click()
    node(page, "revenue_daily").click(modifiers=["Shift"])
    page.get_by_role("button", name=re.compile(r"Materialize selected \(2\)")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Launch runs to materialize 2 assets")
    choose_partitions(dialog, f"[{FEBRUARY[0]}...{FEBRUARY[-1]}]")  # revenue_daily's; monthly_revenue follows
    dialog.get_by_text("Tags", exact=True).click()
    dialog.get_by_role("button", name="Add tags").click()
    editor = page.get_by_role("dialog").filter(has_text="Add tags to run")
    editor.get_by_placeholder("Tag Key").fill(BRANCH_TAG)
    editor.get_by_placeholder("Tag Value").fill(BRANCH)
    editor.get_by_role("button", name="Apply").click()
    expect(editor).to_have_count(0)
    expect(dialog.get_by_text("1 tags", exact=True)).to_be_visible()
    expect(dialog.get_by_text(f"{BRANCH_TAG}: {BRANCH}", exact=True)).to_be_visible()
    expect(dialog.get_by_text("Tags will be applied to all backfill runs")).to_be_visible()
    shot(page, artifacts, "07-launch-dialog-branch-tag")
    dialog.get_by_role("button", name="Preview").click()
    preview = page.get_by_role("dialog").filter(has_text="Backfill preview")
    expect(virtual_row(page, "revenue_daily")).to_contain_text(f"{FEBRUARY[0]}...{FEBRUARY[-1]}")
    expect(virtual_row(page, "monthly_revenue")).to_contain_text(f"{FEBRUARY[0]}...{FEBRUARY[0]}")
    shot(page, artifacts, "07-launch-dialog-preview")
    preview.get_by_role("button", name="OK").click()
    expect(preview).to_have_count(0)
    dialog.get_by_role("button", name="Launch backfill").click()
    backfill_id = launched_backfill(page)

    backfill = wait_for_backfill(dev.url, backfill_id)
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    assert {"key": BRANCH_TAG, "value": BRANCH} in backfill["tags"], backfill["tags"]
    runs = backfill["runs"]
    assert len(runs) == 2 and all(r["status"] == "SUCCESS" for r in runs), runs  # one per asset and range
    assert all({"key": BRANCH_TAG, "value": BRANCH} in r["tags"] for r in runs), runs  # the dialog's tag: on each
    tags = [{t["key"]: t["value"] for t in r["tags"]} for r in runs]
    ranges = {(t["dagster/asset_partition_range_start"], t["dagster/asset_partition_range_end"]) for t in tags}
    assert ranges == {(FEBRUARY[0], FEBRUARY[-1]), (FEBRUARY[0], FEBRUARY[0])}, ranges

    # Consumers read exactly what they read before; the branch is open and holds the backfill's versions, fixed.
    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        assert consumers_read(con) == before
        branch = con.execute("SELECT state, brief, reviewer FROM bfa.branches WHERE branch = ?", [BRANCH]).fetchall()
        staged = con.execute(
            "SELECT asset, status, list(DISTINCT run_id), list(partition_key ORDER BY partition_key), list(version) "
            "FROM bfa.versions WHERE branch = ? GROUP BY 1, 2 ORDER BY 1",
            [BRANCH],
        ).fetchall()
        staged_daily = [v for asset, *_, versions in staged if asset == "revenue_daily" for v in versions]
        staged_refunds = con.execute(
            "SELECT sum(refunds_usd) FROM bfa.revenue_daily WHERE _bfa_version IN (SELECT unnest(?))", [staged_daily]
        ).fetchone()[0]
    finally:
        con.close()
    assert branch == [("open", None, None)]  # opened by the run: no brief, so no reviewer to approve it
    assert [(a, s, k) for a, s, _, k, _ in staged] == [
        ("monthly_revenue", "branched", [FEBRUARY[0]]),
        ("revenue_daily", "branched", FEBRUARY),
    ], staged
    assert {r for _, _, run_ids, _, _ in staged for r in run_ids} == {r["runId"] for r in runs}
    assert staged_refunds == totals(fixed)[1]  # the branch holds February with its refunds; nobody reads it yet

    # The maintenance notice: Dagster holds it on both tables and the consumer, and the consumer's Events tab
    # shows it, naming the backfill and the branch.
    notice = re.compile(
        rf"^Maintenance: Dagster backfill {re.escape(backfill_id)} is staging in branch {re.escape(BRANCH)} and "
        r"will change (.+)\. Consumers read the current data until the branch publishes, all tables at once\.$"
    )
    changes = {f"revenue_daily {FEBRUARY[0]}..{FEBRUARY[-1]}", f"monthly_revenue {FEBRUARY[0]}"}
    for asset in ("revenue_daily", "monthly_revenue", CONSUMER):
        observation = latest_asset_events(dev.url, asset)["observation"]
        said = notice.match((observation or {}).get("description") or "")
        assert said and set(said[1].split("; ")) == changes, (asset, observation)
    page.goto(f"{dev.url}/assets/{CONSUMER}")
    page.get_by_role("tab", name="Events").click()
    shown = page.get_by_text(notice)
    expect(shown).to_be_visible()
    assert set(notice.match(shown.inner_text())[1].split("; ")) == changes
    expect(page.get_by_text("Observed", exact=True).first).to_be_visible()
    shot(page, artifacts, "07-consumer-maintenance-notice")

    # Published from the UI: Jobs, branch_decision, Launchpad, the decision typed as config, Launch Run.
    page.get_by_role("link").filter(has_text=re.compile(r"^Jobs$")).click()
    page.get_by_role("link", name="branch_decision").click()
    page.get_by_role("tab", name="Launchpad").click()
    config = page.locator(".CodeMirror").first
    expect(config).to_contain_text("branch_decision_op")  # Dagster's scaffold, replaced whole
    reason = "February with refunds, checked in the branch"
    set_editor_text(
        page,
        config,
        "ops:\n  branch_decision_op:\n    config:\n"
        f"      branch: {BRANCH}\n      action: publish\n      by: {PUBLISHER}\n      reason: {reason}\n",
    )
    expect(page.get_by_text("No errors", exact=True)).to_be_visible()
    launch = page.get_by_role("button", name="Launch Run")
    expect(launch).to_be_enabled()  # once the config is validated
    shot(page, artifacts, "07-branch-decision-launchpad")
    launch.click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url)[1]
    run = wait_for_run(dev.url, run_id)
    assert run["status"] == "SUCCESS", run

    # The new data: February fixed, refunds subtracted, in both tables at once; nothing else moved.
    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        after = consumers_read(con)
        monthly_of_days = con.execute(
            "SELECT ?::DATE, currency, sum(purchases), sum(refunds), sum(gross_revenue_usd), sum(refunds_usd), "
            "sum(net_revenue_usd) FROM main.revenue_daily WHERE revenue_date BETWEEN ? AND ? GROUP BY 2 ORDER BY 2",
            [FEBRUARY[0], FEBRUARY[0], FEBRUARY[-1]],
        ).fetchall()
        decided = con.execute("SELECT state, decided_by FROM bfa.branches WHERE branch = ?", [BRANCH]).fetchall()
        published = {}
        for asset in ("revenue_daily", "monthly_revenue"):
            latest = latest_asset_events(dev.url, asset)["materialization"]
            assert latest and latest["runId"] == "" and latest["partition"] in FEBRUARY, (asset, latest)  # runless
            key = latest["partition"]
            version, rows, content_hash, rows_stored, hash_stored = published_snapshot(con, asset)[key]
            assert (rows, content_hash) == (rows_stored, hash_stored), asset  # the hash recomputed from the rows
            column = SPEC[asset].partition_column
            stored = f"SELECT * EXCLUDE (_bfa_version, _bfa_published) FROM bfa.{asset} WHERE _bfa_version = $version"
            served = f"SELECT * FROM main.{asset} WHERE {column} = $key"
            differ = con.execute(
                f"SELECT count(*) FROM (({stored} EXCEPT ALL {served}) UNION ALL ({served} EXCEPT ALL {stored}))",
                {"version": version, "key": key},
            ).fetchone()[0]
            assert differ == 0, asset  # consumers read exactly that version's rows
            [(branch_of_version,)] = con.execute(
                "SELECT branch FROM bfa.versions WHERE version = ?", [version]
            ).fetchall()
            assert branch_of_version == BRANCH
            published[asset] = (key, version, content_hash)
    finally:
        con.close()
    assert decided == [("published", PUBLISHER)]
    assert in_february(after["revenue_daily"]) == fixed
    assert in_february(after["revenue_daily"], False) == in_february(before["revenue_daily"], False)
    assert in_february(after["monthly_revenue"], False) == in_february(before["monthly_revenue"], False)
    assert in_february(after["monthly_revenue"]) == monthly_of_days  # February's month is the sum of its days
    gross_before, _, net_before = totals(legacy)
    gross, refunds, net = totals(in_february(after["revenue_daily"]))
    assert gross == gross_before and refunds > 0 and net == net_before - refunds < net_before
    assert totals(in_february(after["monthly_revenue"])) == (gross, refunds, net)
    assert totals(in_february(before["monthly_revenue"]))[2] == net_before

    # Each table's page: the latest materialization is the publish's, of a February partition, with the version
    # and content hash the warehouse publishes for it now.
    for asset, (key, version, content_hash) in published.items():
        page.goto(f"{dev.url}/assets/{asset}")
        latest = page.get_by_text("Latest materialization", exact=True).locator("xpath=..")
        expect(latest.get_by_role("link", name=key, exact=True)).to_be_visible()
        for label, value in (("content_hash", content_hash), ("version", str(version))):
            row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=label, exact=True))
            expect(row.get_by_role("cell").last).to_have_text(value)
        row.scroll_into_view_if_needed()
        shot(page, artifacts, f"07-published-{asset}")


def test_8_the_brief_blast_radius_and_change_note_render_in_the_ui(dev, page, artifacts):
    assert_idle(dev.url)
    brief = f"backfills/{BRIEF}.yaml"
    out = run_cli(dev.env, "launch", brief, "--url", dev.url, "--wait", "--poll-seconds", "2", timeout_s=480)
    backfill_id = out.split("Launched backfill ", 1)[1].split()[0]
    backfill = graphql(dev.url, BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill

    # The blast radius the brief's description carries (markdown) is what the backfill's page shows.
    blast = re.findall(r"^\| (\w+) \| [^|]+ \| [^|]+ \((\d+)\) \| [\d,]+ \|$", backfill["description"], re.M)
    assert dict(blast) == {"revenue_daily": "90", "monthly_revenue": "3"}, backfill["description"]
    assert "Consumers: Finance revenue dashboard (team:finance)" in backfill["description"]
    page.goto(f"{dev.url}/runs/b/{backfill_id}")
    expect(status_tag(page, "Succeeded")).to_be_visible()
    expect(page.get_by_text(f"{SEEDED[0]}...{SEEDED[1]}", exact=True)).to_be_visible()
    expect(page.locator("[class*='VirtualizedTable_row']")).to_have_count(len(blast))
    for asset, partitions in blast:
        expect(virtual_row(page, asset)).to_have_text(
            re.compile(rf"{asset}\s*100% completed\s*{partitions}\s*0\s*{partitions}\s*0")
        )
    shot(page, artifacts, "08-brief-backfill")
    page.goto(f"{dev.url}/runs")
    expect(page.get_by_text(f"backfill_assets/brief: {BRIEF}", exact=True)).to_be_visible()
    shot(page, artifacts, "08-runs-with-brief-tags")

    # The publish's change note renders on the asset's page, with the figures the warehouse holds.
    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        net, refunds = con.execute(
            "SELECT sum(net_revenue_usd), sum(refunds_usd) FROM main.revenue_daily WHERE revenue_date BETWEEN ? AND ?",
            list(SEEDED),
        ).fetchone()
    finally:
        con.close()
    page.goto(f"{dev.url}/assets/revenue_daily")
    page.get_by_role("row").filter(has_text="change_note").get_by_text("[Show Markdown]").click()
    note = page.get_by_role("dialog")
    title = note.get_by_text(f"revenue_daily {SEEDED[0]}..{SEEDED[1]}, brief {BRIEF}", exact=True)
    expect(title).to_be_visible()
    expect(note.get_by_role("heading", name="What changed")).to_be_visible()
    expect(note.get_by_role("heading", name="Metrics")).to_be_visible()

    def metric(name: str) -> list[str]:
        row = note.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
        expect(row).to_have_count(1)
        return row.get_by_role("cell").all_inner_texts()

    def amount(text: str) -> Decimal:
        return Decimal(text.replace(",", ""))

    _, _, net_before, net_after, net_change, _ = metric("net_revenue_usd")
    _, _, refunds_before, refunds_after, refunds_change, _ = metric("refunds_usd")
    assert (amount(net_after), amount(refunds_after)) == (net, refunds)
    assert amount(net_after) - amount(net_before) == amount(net_change) == -amount(refunds_change) < 0
    assert amount(refunds_after) - amount(refunds_before) == amount(refunds_change)
    title.scroll_into_view_if_needed()
    shot(page, artifacts, "08-change-note")


def test_9_one_day_of_the_hourly_table_publishes_its_24_hours(dev, page, artifacts):
    assert_idle(dev.url)
    dialog = launch_dialog(page, dev.url, "events_hourly")
    choose_partitions(dialog, f"[{HOURLY_DAY}-00:00...{HOURLY_DAY}-23:00]", "24 partitions")
    shot(page, artifacts, "09-hourly-launch")
    dialog.get_by_role("button", name="Launch backfill").click()
    backfill_id = launched_backfill(page)
    backfill = wait_for_backfill(dev.url, backfill_id)
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    assert len(backfill["runs"]) == 1 and backfill["runs"][0]["status"] == "SUCCESS", backfill["runs"]
    page.goto(f"{dev.url}/runs/b/{backfill_id}")  # targeted, in progress, succeeded, failed
    expect(virtual_row(page, "events_hourly")).to_have_text(
        re.compile(r"events_hourly\s*100% completed\s*24\s*0\s*24\s*0")
    )
    shot(page, artifacts, "09-hourly-backfill")

    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        hours = sorted(bfa.published_partitions(con, "events_hourly"))
        served = con.execute("SELECT event_hour, events FROM main.events_hourly ORDER BY 1").fetchall()
        counted = dict(  # from the clean events consumers read, by the test
            con.execute(
                "SELECT date_trunc('hour', event_ts_utc), count(*) FROM main.events_clean WHERE event_date = ? "
                "GROUP BY 1",
                [HOURLY_DAY],
            ).fetchall()
        )
    finally:
        con.close()
    day = [datetime.fromisoformat(HOURLY_DAY) + timedelta(hours=h) for h in range(24)]
    assert hours == [f"{t:%Y-%m-%d-%H:%M}" for t in day]
    assert served == [(t, counted.get(t, 0)) for t in day]


def region_revenue(con) -> dict[tuple[str, str], tuple]:
    """Every row of main.revenue_by_region, by (day, region): what its consumers read."""
    rows = con.execute(
        "SELECT revenue_date::VARCHAR, region, purchases, refunds, gross_revenue_usd, refunds_usd, net_revenue_usd "
        "FROM main.revenue_by_region"
    )
    return {(d, r): rest for d, r, *rest in rows.fetchall()}


def test_10_a_january_backfill_of_one_region_changes_that_region_only(dev, page, artifacts):
    assert_idle(dev.url)
    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        before = region_revenue(con)
        refunds = con.execute(  # January's refunds in EMEA's currencies, from the clean events, by the test
            "SELECT event_date::VARCHAR, sum(amount_usd) FROM main.events_clean WHERE event_type = 'refund' "
            "AND currency IN (SELECT unnest(?)) AND event_date BETWEEN ? AND ? GROUP BY 1",
            [[c for c, r in REGION_OF.items() if r == "emea"], *JANUARY],
        ).fetchall()
    finally:
        con.close()
    assert len(before) == 90 * 3 and all(rest[1] == 0 for rest in before.values())  # version 1: refunds ignored

    dialog = launch_dialog(page, dev.url, "revenue_by_region")
    dates = dialog.get_by_role("textbox").first
    dates.fill(f"[{JANUARY[0]}...{JANUARY[1]}]")
    dates.press("Enter")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has=page.get_by_title("emea", exact=True)).click()
    page.keyboard.press("Escape")  # closes the region list, not the dialog
    expect(dialog.get_by_text("31 partitions", exact=True)).to_be_visible()
    shot(page, artifacts, "10-region-launch")
    dialog.get_by_role("button", name="Launch backfill").click()
    backfill = wait_for_backfill(dev.url, launched_backfill(page))
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    assert len(backfill["runs"]) == 1, backfill["runs"]  # docs/define-a-table.md: January x one region, one run

    con = duckdb.connect(str(dev.db), read_only=True)
    try:
        after = region_revenue(con)
    finally:
        con.close()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {(d, "emea") for d, _ in refunds}  # EMEA's January days that had a refund, and only them
    for d, refunded in refunds:
        purchases, _, gross, refunds_usd, net = after[(d, "emea")]
        assert (purchases, gross) == (before[(d, "emea")][0], before[(d, "emea")][2])
        assert (refunds_usd, net) == (refunded, gross - refunded)
    page.goto(f"{dev.url}/runs/b/{backfill['id']}")
    expect(status_tag(page, "Succeeded")).to_be_visible()
    shot(page, artifacts, "10-region-backfill")


def test_the_readme_tour_shows_pictures_that_exist():
    tour = (ROOT / "README.md").read_text().split("## A tour of the UI", 1)[1].split("\n## ", 1)[0]
    pictures = re.findall(r"!\[[^\]]+\]\((docs/ui-[\w-]+\.png)\)", tour)
    assert len(pictures) >= 3
    for picture in pictures:
        assert (ROOT / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
