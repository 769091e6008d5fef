"""History: rollback restores content exactly, vacuum is refused clearly, held candidates are decided by
people, and the refunds fix produces a change note where net revenue moves by exactly the refunds."""

import json
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import dagster as dg
import duckdb
import pytest
from conftest import published

from backfill_assets import cli
from backfill_assets import history as h
from backfill_assets import warehouse as wh

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = str(ROOT / "definitions.py")
LEGACY = str(ROOT / "product_analytics" / "legacy.py")
JANUARY = ["--from", "2025-01-01", "--to", "2025-01-31"]
BRIEF = "refunds-fix-2025q1"


def run(*args: str) -> int:
    return cli.main(list(args))


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """January built by the code before the refunds fix, then repaired under the refunds-fix brief.

    Returns (warehouse, dagster home, hashes before the fix, hashes after), hashes per table and partition."""
    tmp = tmp_path_factory.mktemp("story")
    db, home = tmp / "warehouse.duckdb", tmp / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKFILL_ASSETS_DB", str(db))
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY", "300")
        upstream = "key:raw_events or key:events_clean or key:revenue_daily+"
        assert run("materialize", "-f", LEGACY, "--select", upstream, *JANUARY) == cli.EXIT_OK
        before = {a: _hashes(db, a) for a in ("revenue_daily", "monthly_revenue")}
        assert (
            run(
                "materialize",
                "-f",
                DEFINITIONS,
                "--select",
                "key:revenue_daily+",
                *JANUARY,
                "--tag",
                f"backfill_assets/brief={BRIEF}",
            )
            == cli.EXIT_OK
        )
        after = {a: _hashes(db, a) for a in ("revenue_daily", "monthly_revenue")}
    return db, home, before, after


def _hashes(db, asset) -> dict[str, str]:
    return {k: content for k, (_, _, content) in published(db, asset).items()}


@pytest.fixture
def env(story, monkeypatch, tmp_path):
    db, home, _, _ = story
    copy = tmp_path / "warehouse.duckdb"
    copy.write_bytes(Path(db).read_bytes())
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(copy))
    monkeypatch.setenv("BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY", "300")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return copy


def test_the_fix_changed_every_day_and_month(story):
    _, _, before, after = story
    assert before["revenue_daily"].keys() == after["revenue_daily"].keys() and len(after["revenue_daily"]) == 31
    assert sum(before["revenue_daily"][k] != after["revenue_daily"][k] for k in after["revenue_daily"]) > 0
    assert before["monthly_revenue"]["2025-01-01"] != after["monthly_revenue"]["2025-01-01"]


def test_change_note_shows_net_revenue_moved_by_exactly_the_refunds(story, monkeypatch, tmp_path, capsys):
    db, home, _, _ = story
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    assert run("notes", "--brief", BRIEF, "--format", "json", "--out", str(tmp_path)) == cli.EXIT_OK
    note = json.loads(capsys.readouterr().out)
    metrics = {(m["asset"], m["metric"]): m for m in note["metrics"]}
    net, refunds = metrics[("revenue_daily", "net_revenue_usd")], metrics[("revenue_daily", "refunds_usd")]
    refunds_by_day = {p["partition"]: Decimal(p["after"]) for p in refunds["partitions"]}
    assert len(net["partitions"]) == 31 and sum(refunds_by_day.values()) > 0
    for p in net["partitions"]:
        assert Decimal(p["after"]) - Decimal(p["before"]) == -refunds_by_day[p["partition"]], p["partition"]
    assert Decimal(net["delta"]) == -sum(refunds_by_day.values())
    assert note["brief"]["id"] == BRIEF and note["assets"]["revenue_daily"]["checks"] == "all passed"
    assert [e["verdict"] for e in note["expected_changes"]] == ["within", "within"]
    assert note["consumers"] == ["Finance revenue dashboard (team:finance)"]

    assert run("notes", "--brief", BRIEF, "--out", str(tmp_path)) == cli.EXIT_OK
    markdown = capsys.readouterr().out
    assert "| revenue_daily | net_revenue_usd |" in markdown and "largest movers" in markdown
    chart = tmp_path / BRIEF / "revenue_daily.net_revenue_usd.svg"
    assert f"]({chart.name})" in markdown
    svg = ElementTree.parse(chart).getroot()  # noqa: S314 (the file this test just had written)
    assert svg.tag.endswith("svg") and len([e for e in svg.iter() if e.tag.endswith("polyline")]) == 2

    # The same note is the materialization's metadata in the Dagster UI.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("revenue_daily"))
    ui_note = event.asset_materialization.metadata["change_note"].value
    assert (
        f"brief {BRIEF}" in ui_note and f"| revenue_daily | net_revenue_usd | {Decimal(net['before']):,} |" in ui_note
    )


def test_rollback_restores_content_exactly_then_republish_works(story, env, capsys):
    _, _, before, after = story
    assert run("rollback", "revenue_daily", *JANUARY, "-f", DEFINITIONS, "--reason", "finance asked") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "revenue_daily: rolled back 31 partitions" in out
    assert "Downstream partitions now rest on changed data" in out and "monthly_revenue: 2025-01-01 (1)" in out
    assert _hashes(env, "revenue_daily") == before["revenue_daily"]
    assert _hashes(env, "monthly_revenue") == after["monthly_revenue"]  # not cascaded

    con = duckdb.connect(str(env), read_only=True)
    actor, reason, rows = con.execute(
        "SELECT actor, reason, len(partition_keys) FROM bfa.ledger WHERE action = 'rollback'"
    ).fetchall()[0]
    statuses = dict(
        con.execute("SELECT status, count(*) FROM bfa.versions WHERE asset = 'revenue_daily' GROUP BY 1").fetchall()
    )
    con.close()
    assert actor and reason == "finance asked" and rows == 31
    assert statuses == {"published": 31, "rolled_back": 31}

    assert run("materialize", "--select", "key:revenue_daily", *JANUARY) == cli.EXIT_OK
    assert _hashes(env, "revenue_daily") == after["revenue_daily"]


def test_cascade_rolls_back_downstream_published_by_the_same_brief(story, env, capsys):
    _, _, before, _ = story
    assert run("rollback", "revenue_daily", *JANUARY, "--cascade", "-f", DEFINITIONS) == cli.EXIT_OK
    assert "monthly_revenue: rolled back 1 partition" in capsys.readouterr().out
    assert _hashes(env, "revenue_daily") == before["revenue_daily"]
    assert _hashes(env, "monthly_revenue") == before["monthly_revenue"]


def test_rollback_to_a_vacuumed_version_is_refused_and_changes_nothing(story, env, capsys):
    con = wh.connect(str(env))
    candidates = h.vacuum_candidates(con, {"revenue_daily": h.Retention(keep_versions=1, keep_days=0)}, set(), None)
    assert len(candidates) == 31 and {c["status"] for c in candidates} == {"superseded"}
    freed = h.vacuum(con, candidates)
    con.close()
    assert freed == sum(c["rows"] for c in candidates) > 0
    published_before = published(env, "revenue_daily")

    assert run("rollback", "revenue_daily", "--partition", "2025-01-05", "-f", DEFINITIONS) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "was removed by retention" in err and "Nothing was changed" in err
    version = candidates[4]["version"]
    assert (
        run("rollback", "revenue_daily", "--partition", "2025-01-05", "--to-version", str(version), "-f", DEFINITIONS)
        == cli.EXIT_USAGE
    )
    assert f"version {version} of revenue_daily [2025-01-05] was removed by retention" in capsys.readouterr().err
    assert published(env, "revenue_daily") == published_before


def test_vacuum_keeps_what_a_brief_still_needs(story, env, capsys):
    con = wh.connect(str(env))
    protected = h.brief_protected_versions(con, [BRIEF])
    rule = {"revenue_daily": h.Retention(keep_versions=1, keep_days=0)}
    assert h.vacuum_candidates(con, rule, protected, None) == []  # the fix and its way back are kept
    con.close()
    assert run("vacuum", "--dry-run", "-f", DEFINITIONS) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("vacuum would remove 0 versions, 0 rows") and BRIEF in out


def test_history_lists_every_version_with_its_checks(story, env, capsys):
    assert run("history", "revenue_daily", "--partition", "2025-01-05", "--json", "-f", DEFINITIONS) == cli.EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert [(r["status"], r["code_version"]) for r in rows] == [("published", "2"), ("superseded", "1")]
    assert rows[0]["checks"] == dict.fromkeys(
        ["inputs_complete", "unique_grain", "complete", "reconciled", "schema", "no_personal_data"], True
    )
    assert run("history", "no_such_table", "-f", DEFINITIONS) == cli.EXIT_USAGE
    assert "unknown asset 'no_such_table'" in capsys.readouterr().err


def test_held_candidates_are_approved_or_discarded_by_a_person(story, env, capsys):
    con = duckdb.connect(str(env))
    con.execute("DELETE FROM bfa.raw_events WHERE ingest_date = DATE '2025-01-20'")  # a lost load
    con.close()
    args = ["--select", "key:events_clean", "--from", "2025-01-19", "--to", "2025-01-20"]
    assert run("materialize", *args) == cli.EXIT_HELD
    before = published(env, "events_clean")
    with pytest.raises(SystemExit) as no_decider:  # who and why are required
        run("approve", "events_clean", "--partition", "2025-01-20", "-f", DEFINITIONS)
    assert no_decider.value.code == cli.EXIT_USAGE and "--by, --reason" in capsys.readouterr().err
    assert (
        run(
            "approve",
            "events_clean",
            "--partition",
            "2025-01-20",
            "--by",
            "ana@example.com",
            "--reason",
            "the source really lost that day",
            "-f",
            DEFINITIONS,
        )
        == cli.EXIT_OK
    )
    assert "approved by ana@example.com" in capsys.readouterr().out
    after = published(env, "events_clean")
    assert after["2025-01-20"] != before["2025-01-20"] and after["2025-01-19"] == before["2025-01-19"]
    assert (
        run("discard", "events_clean", "--by", "ana@example.com", "--reason", "stale candidate", "-f", DEFINITIONS)
        == cli.EXIT_OK
    )
    con = duckdb.connect(str(env), read_only=True)
    left = con.execute("SELECT count(*) FROM bfa.versions WHERE asset = 'events_clean' AND status = 'held'")
    assert left.fetchall()[0][0] == 0
    decisions = con.execute(
        "SELECT action, actor, reason FROM bfa.ledger WHERE action IN ('approve', 'discard') ORDER BY entry_id"
    ).fetchall()
    con.close()
    assert decisions == [
        ("approve", "ana@example.com", "the source really lost that day"),
        ("discard", "ana@example.com", "stale candidate"),
    ]
    assert published(env, "events_clean") == after


def test_diff_compares_the_last_publish_with_its_previous_version(story, env, capsys):
    assert run("diff", "revenue_daily", *JANUARY, "--json", "-f", DEFINITIONS) == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    result = report["diff"]
    assert result["keys"] == ["revenue_date", "currency"]
    assert result["base_only"] == 0 and result["base_duplicate_keys"] == 0 == result["target_duplicate_keys"]
    assert result["matched"] + result["target_only"] == result["target_rows"]
    assert result["partial_matches"] > 0 and result["column_match_rates"]["gross_revenue_usd"] == 1.0
    net = next(m for m in report["metrics"] if m["metric"] == "net_revenue_usd")
    refunds = next(m for m in report["metrics"] if m["metric"] == "refunds_usd")
    assert Decimal(net["delta"]) == -Decimal(refunds["after"]) < 0
    compared = {v["base"] for v in report["versions"].values()} | {v["target"] for v in report["versions"].values()}
    assert len(compared) == 62  # 31 previous and 31 published versions


def test_diff_shows_a_held_candidate_against_the_published_version(story, env, capsys):
    con = duckdb.connect(str(env))
    con.execute("DELETE FROM bfa.raw_events WHERE ingest_date = DATE '2025-01-25'")
    con.close()
    assert run("materialize", "--select", "key:events_clean", "--from", "2025-01-25", "--to", "2025-01-25") == 1
    capsys.readouterr()
    assert run("diff", "events_clean", "--partition", "2025-01-25", "-f", DEFINITIONS) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "keys only in base:" in out and "Diff on keys (event_id)" in out
    assert run("diff", "events_clean", "--partition", "2025-01-25", "--base", "999999", "-f", DEFINITIONS) == 2
    assert "version 999999 is not a version of events_clean [2025-01-25]" in capsys.readouterr().err
