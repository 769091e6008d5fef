"""Blast radius: partition mapping arithmetic equals Dagster's, and plans over the reference pipeline."""

import datetime as dt

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_condensed_ranges_and_whole_windows():
    index = pl.partition_index(WEEKLY)
    lo, hi = index.within(dt.date(2023, 1, 1), dt.date(2023, 1, 31))
    assert index.keys[lo:hi] == ("2023-01-02", "2023-01-09", "2023-01-16", "2023-01-23")
    days = pl.partition_index(DAILY)
    assert days.condensed(days.ranges_of(["2023-01-03", "2023-01-01", "2023-01-02", "2023-01-09"])) == [
        "2023-01-01..2023-01-03",
        "2023-01-09",
    ]


@pytest.mark.parametrize("start_offset,end_offset", [(0, 0), (0, 3), (-7, 0)])
def test_map_downstream_clips_to_existing_partitions(start_offset, end_offset):
    index = pl.partition_index(DAILY)
    last = len(index.keys)
    assert pl.map_downstream([(last - 1, last)], index, index, start_offset, end_offset)[-1][1] <= last
    assert pl.map_downstream([(0, 1)], index, index, start_offset, end_offset)[0][0] >= 0
