"""Blast radius: partition mapping arithmetic equals Dagster's, and plans over the reference pipeline."""

import datetime as dt
from pathlib import Path

import dagster as dg
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill_assets import launch
from backfill_assets import planning as pl

DAILY = dg.DailyPartitionsDefinition(start_date="2023-01-01")
DAILY_LATER = dg.DailyPartitionsDefinition(start_date="2023-02-10")
WEEKLY = dg.WeeklyPartitionsDefinition(start_date="2023-01-02", day_offset=1)
SUNDAY_WEEKLY = dg.WeeklyPartitionsDefinition(start_date="2023-01-08")
MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2023-01-01")

# (parent, child, mapping): every kind the reference pipeline uses, and their neighbours.
EDGES = {
    "identity": (DAILY, DAILY, dg.TimeWindowPartitionMapping()),
    "late_window_d..d+3": (DAILY, DAILY, dg.TimeWindowPartitionMapping(start_offset=0, end_offset=3)),
    "trailing_7_days": (DAILY, DAILY, dg.TimeWindowPartitionMapping(start_offset=-6, end_offset=0)),
    "previous_day": (DAILY, DAILY, dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)),
    "daily_to_weekly": (DAILY, WEEKLY, dg.TimeWindowPartitionMapping()),
    "daily_to_sunday_weekly": (DAILY, SUNDAY_WEEKLY, dg.TimeWindowPartitionMapping()),
    "daily_to_monthly": (DAILY, MONTHLY, dg.TimeWindowPartitionMapping()),
    "daily_to_8_weeks": (DAILY, WEEKLY, dg.TimeWindowPartitionMapping(start_offset=-7, end_offset=0)),
    "weekly_to_weekly_4": (WEEKLY, WEEKLY, dg.TimeWindowPartitionMapping(start_offset=-3, end_offset=0)),
    "weekly_to_monthly": (WEEKLY, MONTHLY, dg.TimeWindowPartitionMapping()),
    "monthly_to_daily": (MONTHLY, DAILY, dg.TimeWindowPartitionMapping()),
    "daily_to_later_daily": (DAILY, DAILY_LATER, dg.TimeWindowPartitionMapping()),
    "identity_mapping": (DAILY, DAILY, dg.IdentityPartitionMapping()),
}


def dagster_downstream(parent, child, mapping, keys) -> list[str]:
    subset = mapping.get_downstream_partitions_for_partitions(parent.subset_with_partition_keys(keys), parent, child)
    return sorted(subset.get_partition_keys())


@settings(max_examples=400, deadline=None)
@given(
    edge=st.sampled_from(sorted(EDGES)),
    ranges=st.lists(st.tuples(st.integers(0, 1100), st.integers(1, 60)), min_size=1, max_size=3),
)
def test_downstream_partitions_equal_dagsters_mapping(edge, ranges):
    parent, child, mapping = EDGES[edge]
    parent_index, child_index = pl.partition_index(parent), pl.partition_index(child)
    n = len(parent_index.keys)
    changed = pl.merge([(min(lo, n - 1), min(lo + size, n)) for lo, size in ranges])
    offsets = (
        (mapping.start_offset, mapping.end_offset) if isinstance(mapping, dg.TimeWindowPartitionMapping) else (0, 0)
    )

    ours = child_index.keys_in(pl.map_downstream(changed, parent_index, child_index, *offsets))

    assert sorted(ours) == dagster_downstream(parent, child, mapping, parent_index.keys_in(changed))


REGIONS = dg.StaticPartitionsDefinition(["apac", "eu", "latam", "us"])
TEN_DAYS = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-01-11")
DAY_X_REGION = dg.MultiPartitionsDefinition({"date": TEN_DAYS, "region": REGIONS})
PREVIOUS_DAY_SAME_REGION = dg.MultiPartitionMapping(
    {
        "date": dg.DimensionPartitionMapping("date", dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=0)),
        "region": dg.DimensionPartitionMapping("region", dg.IdentityPartitionMapping()),
    }
)
# (parent, child, mapping) of the static and multi-partition kinds, and the all- and last-partition mappings.
KEYED_EDGES = [
    (REGIONS, REGIONS, dg.IdentityPartitionMapping()),
    (REGIONS, REGIONS, dg.StaticPartitionMapping({"apac": ["apac", "eu"], "eu": "eu", "latam": "us", "us": "us"})),
    (DAY_X_REGION, REGIONS, dg.MultiToSingleDimensionPartitionMapping("region")),
    (REGIONS, DAY_X_REGION, dg.MultiToSingleDimensionPartitionMapping("region")),
    (DAY_X_REGION, DAY_X_REGION, dg.IdentityPartitionMapping()),
    (DAY_X_REGION, DAY_X_REGION, PREVIOUS_DAY_SAME_REGION),
    (TEN_DAYS, DAY_X_REGION, dg.MultiToSingleDimensionPartitionMapping("date")),
    (DAY_X_REGION, TEN_DAYS, dg.MultiToSingleDimensionPartitionMapping("date")),
    (TEN_DAYS, REGIONS, dg.AllPartitionMapping()),
    (REGIONS, TEN_DAYS, dg.AllPartitionMapping()),
    (TEN_DAYS, TEN_DAYS, dg.LastPartitionMapping()),
    (TEN_DAYS, TEN_DAYS, dg.TimeWindowPartitionMapping(start_offset=-2, end_offset=0)),
]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_blast_radius_through_static_and_multi_partition_mappings_equals_dagsters(data):
    """A random tree of 2-4 assets over static, daily and date x region definitions, each a child of an earlier
    one through a random mapping of those kinds: every asset's planned partitions equal what Dagster's asset
    graph maps the seed keys to, one parent key at a time, followed downstream by the test itself."""
    first = data.draw(st.sampled_from([REGIONS, TEN_DAYS, DAY_X_REGION]))
    defs_of, deps_of = [first], [[]]
    for i in range(1, data.draw(st.integers(2, 4))):
        parent = data.draw(st.integers(0, i - 1))
        edge = data.draw(st.sampled_from([e for e in KEYED_EDGES if e[0] == defs_of[parent]]))
        defs_of.append(edge[1])
        deps_of.append([dg.AssetDep(f"a{parent}", partition_mapping=edge[2])])
    pairs = enumerate(zip(defs_of, deps_of, strict=True))  # one definition each: specs would share one mapping
    assets = [dg.asset(name=f"a{i}", partitions_def=p, deps=d)(lambda: None) for i, (p, d) in pairs]
    graph = dg.Definitions(assets=assets).resolve_asset_graph()
    seed_keys = data.draw(st.lists(st.sampled_from([str(k) for k in first.get_partition_keys()]), min_size=1))

    plan = pl.blast_radius(graph, {dg.AssetKey("a0"): pl.partition_index(first).ranges_of(seed_keys)})

    expected = {"a0": set(seed_keys)}
    for i in range(1, len(assets)):  # the chain is in dependency order: a parent comes before its children
        parent = deps_of[i][0].asset_key.to_user_string()
        if parent in expected:
            expected[f"a{i}"] = {
                str(child)
                for key in expected[parent]
                for child in graph.get_child_partition_keys_of_parent(key, dg.AssetKey(parent), dg.AssetKey(f"a{i}"))
            }
    assert {i.asset: set(i.keys) for i in plan.impacts} == {a: k for a, k in expected.items() if k or a == "a0"}


def test_condensed_ranges_and_whole_windows():
    index = pl.partition_index(WEEKLY)
    lo, hi = index.within(dt.date(2023, 1, 1), dt.date(2023, 1, 31))
    assert index.keys[lo:hi] == ("2023-01-02", "2023-01-09", "2023-01-16", "2023-01-23")
    days = pl.partition_index(DAILY)
    assert days.ranges_of(["2023-01-03", "2023-01-01", "2023-01-02", "2023-01-09"]) == [(0, 3), (8, 9)]


def test_a_selected_descendant_still_receives_its_parents_reach():
    from conftest import make_defs

    graph = make_defs("unused.duckdb").resolve_asset_graph()
    march = (dt.date(2025, 3, 1), dt.date(2025, 3, 31))
    alone = pl.blast_radius(graph, pl.selection_seeds(graph, {dg.AssetKey("events_clean")}, *march))
    keys = pl.resolve_selection(graph, "key:events_clean+")
    with_descendants = pl.blast_radius(graph, pl.selection_seeds(graph, keys, *march))
    for plan in (alone, with_descendants):
        by_asset = {i.asset: i for i in plan.tables}
        assert by_asset["retention_cohorts"].partitions == ["2025-02-24..2025-05-19"]
        assert by_asset["weekly_active_users"].partitions == ["2025-02-24..2025-03-31"]
    assert {i.asset for i in with_descendants.tables if i.depth == 0} == {k.to_user_string() for k in keys}


def test_days_are_counted_in_the_partitions_time_zone():
    for tz in ("America/Los_Angeles", "Asia/Tokyo"):
        index = pl.partition_index(dg.DailyPartitionsDefinition(start_date="2025-01-01", timezone=tz))
        lo, hi = index.within(dt.date(2025, 1, 10), dt.date(2025, 1, 12))
        assert index.keys[lo:hi] == ("2025-01-10", "2025-01-11", "2025-01-12"), tz


def test_partition_index_respects_end_offset():
    plain = pl.partition_index(dg.DailyPartitionsDefinition(start_date="2025-01-01"))
    ahead = pl.partition_index(dg.DailyPartitionsDefinition(start_date="2025-01-01", end_offset=1))
    assert len(ahead.keys) == len(plain.keys) + 1


BUMPED_DEFINITIONS = """
import dataclasses, os
import dagster as dg
import backfill_assets as bfa
from product_analytics import tables

bumped = dataclasses.replace(tables.revenue_daily_spec, code_version="3")
assets = [a for a in tables.build_assets() if a.key != dg.AssetKey("revenue_daily")]
assets.append(bfa.derived_asset(bumped, tables.REVENUE_DAILY_SQL, deps=["events_clean"]))
defs = dg.Definitions(assets=assets, resources={"warehouse": bfa.Warehouse(database=os.environ["BACKFILL_ASSETS_DB"])})
"""


def _plan_json(capsys, *args):
    import json

    from backfill_assets import cli

    assert cli.main(["plan", *args, "--json"]) == cli.EXIT_OK
    return json.loads(capsys.readouterr().out)


def test_plan_stale_lists_exactly_the_bumped_assets_partitions_and_downstream(january, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(january))
    definitions = tmp_path / "bumped.py"
    definitions.write_text(BUMPED_DEFINITIONS)
    defs_file = str(Path(__file__).resolve().parents[1] / "definitions.py")

    assert _plan_json(capsys, "--stale", "-f", defs_file)["assets"] == []  # nothing stale before the bump
    plan = _plan_json(capsys, "--stale", "-f", str(definitions))

    assert [(a["asset"], a["partitions"], a["partition_count"]) for a in plan["assets"]] == [
        ("revenue_daily", ["2025-01-01..2025-01-31"], 31),
        ("monthly_revenue", ["2025-01-01"], 1),
    ]
    revenue = plan["assets"][0]
    assert revenue["reason"] == "stale: published under code version 2, current 3"
    assert revenue["published_code_versions"] == {"2": 31} and revenue["code_version"] == "3"
    assert [c["name"] for c in plan["consumers"]] == ["Finance revenue dashboard"]
    assert plan["notify"] == ["team:finance", "team:finance-analytics"]


def test_plan_reports_rows_and_estimates_from_the_ledger(january, monkeypatch, capsys):
    import duckdb

    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(january))
    defs_file = str(Path(__file__).resolve().parents[1] / "definitions.py")
    plan = _plan_json(capsys, "--select", "key:sessions", "--from", "2025-01-10", "--to", "2025-01-19", "-f", defs_file)
    sessions = plan["assets"][0]
    con = duckdb.connect(str(january), read_only=True)
    rows = con.execute("SELECT count(*) FROM sessions WHERE session_date BETWEEN '2025-01-10' AND '2025-01-19'")
    assert sessions["rows_published"] == rows.fetchall()[0][0]
    con.close()
    assert sessions["estimated_seconds"] is not None and sessions["estimated_seconds"] >= 0
    by_asset = {a["asset"]: a for a in plan["assets"]}
    assert by_asset["daily_active_users"]["reason"] == "downstream (1) of sessions"
    assert by_asset["funnel_daily"]["depth"] == 2
    assert by_asset["weekly_active_users"]["rows_published"] == 0  # not built in this warehouse
    assert by_asset["weekly_active_users"]["partitions"] == ["2025-01-06..2025-01-13"]
    assert plan["totals"]["partitions"] == sum(a["partition_count"] for a in plan["assets"])


def test_plan_benchmark_smoke():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "benchmarks/plan_bench.py", "--smoke"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "    100       100" in done.stdout  # every generated asset is downstream of the first layer


ROOT = Path(__file__).resolve().parents[1]
SELECTIONS = [None, "key:raw_events+", "key:events_clean", "key:revenue_daily+", "key:sessions or key:raw_events"]


@settings(max_examples=10, deadline=None)
@given(
    select=st.sampled_from(SELECTIONS),
    start=st.dates(dt.date(2025, 1, 1), dt.date(2025, 6, 30)),
    days=st.integers(0, 40),
)
def test_materialize_runs_exactly_the_partitions_plan_lists(select, start, days, tmp_path_factory):
    """`plan --json` and `materialize` for the same selection and range: every partition plan lists for a
    selected asset is run by materialize (nothing waits when every input is published), in runs whose
    upstream partitions were rebuilt by earlier runs."""
    import json
    from contextlib import redirect_stdout
    from io import StringIO

    from backfill_assets import cli

    end = start + dt.timedelta(days=days)
    args = ["-f", str(ROOT / "definitions.py"), "--from", str(start), "--to", str(end)]
    if select:
        args += ["--select", select]
    out = StringIO()
    with redirect_stdout(out):
        assert cli.main(["plan", "--json", *args]) == cli.EXIT_OK
    defs = cli.load_definitions(str(ROOT / "definitions.py"))
    graph = defs.resolve_asset_graph()
    selected = {k.to_user_string() for k in pl.resolve_selection(graph, select)}
    planned = {}
    for a in json.loads(out.getvalue())["assets"]:
        if a["asset"] in selected:
            index = pl.partition_index(graph.get(dg.AssetKey(a["asset"])).partitions_def)
            keys = set()
            for r in a["partitions"]:
                first, _, last = r.partition("..")
                keys |= set(index.keys[index.position(first) : index.position(last or first) + 1])
            planned[a["asset"]] = keys
    plan = pl.plan_range(graph, select, start, end)
    everything = lambda asset: set(pl.partition_index(graph.get(dg.AssetKey(asset)).partitions_def).keys)  # noqa: E731
    runs, waiting = pl.materialize_runs(graph, plan, pl.resolve_selection(graph, select), everything)
    assert waiting == {}
    ran: dict[str, set[str]] = {}
    for i, run in enumerate(runs):
        for key in run.assets:
            ran.setdefault(key.to_user_string(), set()).update(run.keys)
            for parent in graph.get(key).parent_keys:  # a parent's rebuilt partitions come from earlier runs
                later = {k for r in runs[i + 1 :] if parent in r.assets for k in r.keys}
                assert not later & planned.get(parent.to_user_string(), set()) or parent in run.assets
    assert {a: k for a, k in ran.items() if k} == {a: k for a, k in planned.items() if k}


def test_materialize_rebuilds_what_plan_says_downstream_of_late_data(tmp_path, monkeypatch, capsys):
    """The issue's case: raw_events+ over 04-01..04-07 rebuilds events_clean from 03-29 (it reads D..D+3)."""
    from backfill_assets import cli

    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    f = ["-f", str(ROOT / "definitions.py")]
    daily = "key:raw_events or key:events_clean"
    assert cli.main(["materialize", *f, "--select", daily, "--from", "2025-03-25", "--to", "2025-04-10"]) == 0
    capsys.readouterr()
    assert cli.main(["materialize", *f, "--select", daily, "--from", "2025-04-01", "--to", "2025-04-07"]) == 0
    out = capsys.readouterr().out
    assert "raw_events: 7 partitions 2025-04-01..2025-04-07" in out
    assert "events_clean: 10 partitions 2025-03-29..2025-04-07" in out


def _mixed_graph():
    """A daily table, a monthly table over it, a plain unpartitioned asset over the monthly one, and a daily asset
    that reads a plain unpartitioned dimension: a project's own mix, not the reference pipeline."""

    @dg.asset(partitions_def=DAILY)
    def daily(): ...

    @dg.asset(partitions_def=MONTHLY, deps=[daily])
    def monthly(): ...

    @dg.asset(deps=[monthly])
    def leaderboard(): ...

    @dg.asset
    def countries(): ...

    @dg.asset(partitions_def=DAILY, deps=[countries])
    def by_country(): ...

    return dg.Definitions(assets=[daily, monthly, leaderboard, countries, by_country]).resolve_asset_graph()


def test_an_unpartitioned_asset_is_in_the_plan_whole_and_runs_after_its_parents():
    graph = _mixed_graph()
    march = (dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    plan = pl.plan_range(graph, "key:daily+", *march)
    by_asset = {i.asset: i for i in plan.tables}
    assert set(by_asset) == {"daily", "monthly", "leaderboard"}
    assert (by_asset["leaderboard"].partitioned, by_asset["leaderboard"].partitions) == (False, ["whole asset"])
    assert plan.totals()["unpartitioned"] == 1 and plan.totals()["partitions"] == 31 + 1
    runs, waiting = pl.materialize_runs(graph, plan, set(graph.get_all_asset_keys()), lambda asset: set())
    assert waiting == {}  # plain assets have no inputs gate
    order = [k.to_user_string() for run in runs for k in run.assets]
    assert order == ["daily", "monthly", "leaderboard"]
    assert runs[-1].keys == ()
    assert "leaderboard" in pl.render(plan) and "+ 1 unpartitioned asset rebuilt whole" in pl.render(plan)
    # The default selection is every asset, plain ones too; a launch targets the plain one whole.
    everything = pl.plan_range(graph, None, *march)
    assert {i.asset for i in everything.tables if not i.partitioned} == {"leaderboard", "countries"}
    params = launch.backfill_params(BRIEF, plan)["partitionsByAssets"]
    assert {"assetKey": {"path": ["leaderboard"]}, "partitions": None} in params


def test_every_partition_of_a_child_reads_its_whole_unpartitioned_parent():
    graph = _mixed_graph()
    plan = pl.plan_range(graph, "key:countries+", dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    by_asset = {i.asset: i for i in plan.tables}
    expected = len(DAILY.get_partition_keys())  # Dagster's own count of the child's partitions
    assert by_asset["by_country"].partition_count == expected
    assert by_asset["countries"].partitions == ["whole asset"]


BRIEF = {"id": "b1", "title": "t", "risk": "low-risk enrichment", "owner": "o", "reviewer": "r", "reason": "x",
         "rollback": "y"}  # fmt: skip


def test_an_asset_that_reads_no_changed_partition_and_what_only_it_feeds_are_not_in_the_blast_radius():
    """b reads only a's last day, and c (unpartitioned) reads b: a change to a's first day reaches neither."""
    a = dg.asset(name="a", partitions_def=TEN_DAYS)(lambda: None)
    b = dg.asset(
        name="b", partitions_def=TEN_DAYS, deps=[dg.AssetDep("a", partition_mapping=dg.LastPartitionMapping())]
    )(lambda: None)
    c = dg.asset(name="c", deps=["b"])(lambda: None)
    graph = dg.Definitions(assets=[a, b, c]).resolve_asset_graph()
    first, last = (
        pl.partition_index(TEN_DAYS).ranges_of(["2025-01-01"]),
        pl.partition_index(TEN_DAYS).ranges_of(["2025-01-10"]),
    )
    assert [i.asset for i in pl.blast_radius(graph, {dg.AssetKey("a"): first}).impacts] == ["a"]
    reached = pl.blast_radius(graph, {dg.AssetKey("a"): last}).impacts
    assert [(i.asset, i.partition_count, i.partitioned) for i in reached] == [
        ("a", 1, True),
        ("b", 10, True),
        ("c", 0, False),
    ]
