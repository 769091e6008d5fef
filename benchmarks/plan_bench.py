"""Plan time on generated lineage graphs: 100, 1,000 and 5,000 assets with 3 years of daily partitions.

Each graph is layered: every asset reads 1-3 assets of earlier layers through a random mapping of the
kinds the reference pipeline uses (identity, a late-arrival window, a trailing window, daily -> weekly,
daily -> monthly, multi-week). The plan backfills the first layer over the whole 3 years, so the blast
radius is most of the graph. Prints a table and writes benchmarks/results/plan.json.

    python benchmarks/plan_bench.py [--sizes 100,1000,5000] [--smoke]
"""

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import dagster as dg

from backfill_assets import planning

START = (dt.date.today() - dt.timedelta(days=3 * 365)).isoformat()
DAILY = dg.DailyPartitionsDefinition(start_date=START)
WEEKLY = dg.WeeklyPartitionsDefinition(start_date=START, day_offset=1)
MONTHLY = dg.MonthlyPartitionsDefinition(start_date=START)
DAILY_MAPPINGS = [
    dg.TimeWindowPartitionMapping(),
    dg.TimeWindowPartitionMapping(start_offset=0, end_offset=3),
    dg.TimeWindowPartitionMapping(start_offset=-6, end_offset=0),
]


def generate(n: int, seed: int = 42) -> dg.Definitions:
    """n materializable assets: 80% daily, 15% weekly, 5% monthly, in layers of about 50."""
    rng = random.Random(seed)
    pdefs = {"daily": DAILY, "weekly": WEEKLY, "monthly": MONTHLY}
    kinds: dict[str, str] = {}
    assets = []
    for i in range(n):
        name = f"a{i:05d}"
        kind = "daily" if i < 50 or rng.random() < 0.8 else rng.choice(["weekly", "weekly", "weekly", "monthly"])
        deps = []
        if i >= 50:
            layer_start = (i // 50) * 50
            candidates = [f"a{j:05d}" for j in range(max(0, layer_start - 200), layer_start)]
            for parent in rng.sample([c for c in candidates if kinds[c] == "daily"], k=rng.randint(1, 3)):
                if kind == "daily":
                    mapping = rng.choice(DAILY_MAPPINGS)
                elif kind == "weekly":
                    mapping = rng.choice(
                        [dg.TimeWindowPartitionMapping(), dg.TimeWindowPartitionMapping(start_offset=-7, end_offset=0)]
                    )
                else:
                    mapping = dg.TimeWindowPartitionMapping()
                deps.append(dg.AssetDep(parent, partition_mapping=mapping))
        kinds[name] = kind
        assets.append(_asset(name, deps, pdefs[kind]))
    return dg.Definitions(assets=assets)


def _asset(name: str, deps: list, pdef) -> dg.AssetsDefinition:
    @dg.asset(name=name, deps=deps, partitions_def=pdef, code_version="1")
    def _a() -> None:
        return None

    return _a


def measure(n: int) -> dict:
    started = time.perf_counter()
    defs = generate(n)
    graph = defs.resolve_asset_graph()
    loaded = time.perf_counter()
    roots = [dg.AssetKey(f"a{i:05d}") for i in range(min(50, n))]
    begin = time.perf_counter()
    keys = planning.resolve_selection(graph, " or ".join(f"key:{k.to_user_string()}" for k in roots))
    seeds = planning.selection_seeds(graph, keys, dt.date.fromisoformat(START), dt.date.today())
    plan = planning.blast_radius(graph, seeds)
    planned = time.perf_counter()
    return {
        "assets": n,
        "affected_assets": len(plan.tables),
        "affected_partitions": plan.totals()["partitions"],
        "build_graph_s": round(loaded - started, 3),
        "plan_s": round(planned - begin, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--smoke", action="store_true", help="100 assets only, no results file")
    args = parser.parse_args()
    sizes = [100] if args.smoke else [int(s) for s in args.sizes.split(",")]
    results = [measure(n) for n in sizes]
    print(f"{'assets':>7} {'affected':>9} {'partitions':>11} {'graph build s':>14} {'plan s':>8}")
    for r in results:
        print(
            f"{r['assets']:>7} {r['affected_assets']:>9} {r['affected_partitions']:>11,} "
            f"{r['build_graph_s']:>14} {r['plan_s']:>8}"
        )
    if not args.smoke:
        out = Path(__file__).parent / "results" / "plan.json"
        out.parent.mkdir(exist_ok=True)
        machine = {"cores": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()}
        out.write_text(json.dumps({"machine": machine, "days": 3 * 365, "results": results}, indent=2) + "\n")
        print(f"written {out}")
    largest = results[-1]
    if largest["assets"] >= 5000 and largest["plan_s"] >= 2.0:
        print(f"TARGET MISSED: {largest['assets']} assets planned in {largest['plan_s']} s (target < 2 s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
