"""Backfill briefs: the preflight gate, and launch/status refusing clearly."""

import json
from pathlib import Path

import duckdb
import pytest
import yaml

from backfill_assets import cli

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = str(ROOT / "definitions.py")
REFUNDS = ROOT / "backfills" / "refunds-fix-2025q1.yaml"
CLOSED_PORT = "http://127.0.0.1:9"  # discard port: nothing listens there


@pytest.fixture(autouse=True)
def _no_warehouse(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(tmp_path / "none.duckdb"))


def write_brief(tmp_path, **changes) -> str:
    brief = yaml.safe_load(REFUNDS.read_text())
    for key, value in changes.items():
        if value is None:
            brief.pop(key)
        else:
            brief[key] = value
    path = tmp_path / f"{brief.get('id', 'brief')}.yaml"
    path.write_text(yaml.safe_dump(brief, sort_keys=False))
    return str(path)


def preflight(path, capsys):
    code = cli.main(["preflight", path, "-f", DEFINITIONS])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("brief", sorted((ROOT / "backfills").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_briefs_pass_preflight_and_print_their_blast_radius(brief, capsys):
    code, out, _ = preflight(str(brief), capsys)
    assert code == cli.EXIT_OK, out
    assert "Preflight passed." in out and "Blast radius of brief" in out and "Consumers to notify:" in out


def test_refunds_fix_blast_radius(capsys):
    _, out, _ = preflight(str(REFUNDS), capsys)
    assert "revenue_daily    selected                         2025-01-01..2025-03-31 (90)" in out
    assert "monthly_revenue  downstream (1) of revenue_daily  2025-01-01..2025-03-01 (3)" in out
    assert "Finance revenue dashboard (dashboard; team:finance) reads monthly_revenue, revenue_daily" in out


SCOPE = {"select": "key:revenue_daily", "from": "2025-01-01", "to": "2025-03-31"}


@pytest.mark.parametrize(
    ("changes", "failure"),
    [
        ({"reason": "  "}, "sections: missing or blank: reason"),
        ({"rollback": None, "stakeholders": []}, "sections: missing or blank: rollback, stakeholders"),
        ({"risk": "yolo"}, "risk: 'yolo' is not one of"),
        ({"write_strategy": "append"}, "append is not idempotent"),
        (
            {"write_strategy": "'; DROP TABLE bfa.ledger; --"},
            "is not one of: partition_overwrite, merge_by_key, parallel_version, append",
        ),
        ({"scope": {**SCOPE, "select": "key:no_such_table"}}, "scope: select 'key:no_such_table' matches no"),
        ({"scope": {**SCOPE, "from": "2025-04-01"}}, "scope: from 2025-04-01 is after to 2025-03-31"),
        ({"scope": {**SCOPE, "from": "2024-12-01"}}, "before the first partition of the selection (2025-01-01)"),
        ({"scope": {**SCOPE, "from": "2031-01-01", "to": "2031-02-01"}}, "is in the future"),
        ({"scope": {**SCOPE, "to": "2031-02-01"}}, "to 2031-02-01 is after the last partition of the selection"),
        ({"scope": {"from": "2025-01-01", "to": "2025-01-31"}}, "scope must have select, and from and to"),
        ({"scope": {**SCOPE, "from": "first of May"}}, "scope.from 'first of May' is not a date"),
        ({"scope": "revenue_daily"}, "scope must have select, and from and to"),
        ({"stakeholders": ["team:finance-analytics"]}, "not among the stakeholders: Finance revenue dashboard"),
        ({"batch_size": 30}, "write more than 30 partitions per run: revenue_daily (90 per run)"),
        ({"batch_size": "all"}, "batch size: 'all' must be a whole number"),
        (
            {"expected_changes": [{"asset": "revenue_daily", "metric": "profit", "max_relative_change": 0.1}]},
            "revenue_daily declares no metric 'profit'",
        ),
        (
            {"expected_changes": [{"asset": "sessions", "metric": "sessions", "max_relative_change": 0.1}]},
            "'sessions' is not in the blast radius",
        ),
    ],
)
def test_a_broken_brief_fails_preflight_naming_the_problem(tmp_path, capsys, changes, failure):
    code, out, _ = preflight(write_brief(tmp_path, **changes), capsys)
    assert code == cli.EXIT_HELD
    assert "Preflight FAILED" in out
    assert failure in out


def test_batch_size_counts_a_region_s_run_not_every_region_s_partitions(tmp_path, capsys):
    """Dagster runs a day x region backfill one region at a time (docs/define-a-table.md): January of three
    regions is three runs of 31 partitions each."""
    scope = {"select": "key:revenue_by_region", "from": "2025-01-01", "to": "2025-01-31"}
    changes = [{"asset": "revenue_by_region", "metric": "net_revenue_usd", "max_relative_change": 0.15}]
    brief = {"scope": scope, "expected_changes": changes, "stakeholders": ["Regional revenue board"]}
    code, out, _ = preflight(write_brief(tmp_path, **brief, batch_size=31), capsys)
    assert "[ok] batch size: at most 31 partitions per run" in out, out
    code, out, _ = preflight(write_brief(tmp_path, **brief, batch_size=30), capsys)
    assert "more than 30 partitions per run: revenue_by_region (31 per run)" in out, out


def test_brief_id_must_be_safe_and_match_the_file_name(tmp_path, capsys):
    path = tmp_path / "refunds.yaml"
    path.write_text(REFUNDS.read_text().replace("id: refunds-fix-2025q1", "id: x'; DROP TABLE t --"))
    code, out, _ = preflight(str(path), capsys)
    assert code == cli.EXIT_HELD and "[FAIL] id:" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: [unclosed", "is not valid YAML at line 1"),
        ("- just\n- a list\n", "must be a YAML mapping of the brief's sections, not list"),
    ],
)
def test_unreadable_brief_is_a_usage_error(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = preflight(str(path), capsys)
    assert code == cli.EXIT_USAGE and message in err and "Traceback" not in err and out == ""


def test_missing_brief_file(capsys):
    code, _, err = preflight("backfills/nope.yaml", capsys)
    assert code == cli.EXIT_USAGE and "no brief at backfills/nope.yaml" in err


def test_launch_refuses_a_failing_brief_without_contacting_dagster(tmp_path, capsys):
    code = cli.main(["launch", write_brief(tmp_path, risk="yolo"), "-f", DEFINITIONS, "--url", CLOSED_PORT])
    out = capsys.readouterr().out
    assert code == cli.EXIT_HELD and "Nothing launched" in out


def test_launch_and_status_say_when_dagster_is_not_running(capsys):
    code = cli.main(["launch", str(REFUNDS), "-f", DEFINITIONS, "--url", CLOSED_PORT])
    err = capsys.readouterr().err
    assert code == cli.EXIT_DAGSTER and f"no Dagster answering at {CLOSED_PORT}" in err and "make dev" in err
    assert cli.main(["status", "123", "--url", CLOSED_PORT]) == cli.EXIT_DAGSTER
    assert cli.main(["status", "123", "--url", "file:///etc/passwd"]) == cli.EXIT_DAGSTER
    assert "must start with http:// or https://" in capsys.readouterr().err


def test_preflight_names_partitions_whose_inputs_are_neither_published_nor_rebuilt(january, monkeypatch, capsys):
    """The January warehouse: a brief over January passes the inputs check; one over February would have its
    runs refused by the inputs gate (events_clean's February is not published), and preflight says so."""
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(january))
    scope = {"select": "key:revenue_daily", "from": "2025-01-20", "to": "2025-01-31"}
    _, out, _ = preflight(write_brief(january.parent, scope=scope), capsys)
    assert "inputs: every partition's upstream partitions are published or rebuilt first" in out
    scope = {"select": "key:revenue_daily", "from": "2025-02-01", "to": "2025-02-10"}
    code, out, _ = preflight(write_brief(january.parent, scope=scope), capsys)
    assert code == cli.EXIT_HELD
    assert "inputs: partitions would be refused, reading unpublished upstream partitions: " in out
    assert "revenue_daily 2025-02-01, 2025-02-02, 2025-02-03 ..." in out


def test_launch_json_names_the_backfill_its_branch_and_the_note_before_the_run(january, monkeypatch, capsys):
    """`launch --json` against a stand-in for Dagster's GraphQL: the JSON alone on stdout, and the note before the
    run says what will change (the brief's scope and what it reaches) and that it stages in the branch."""
    from backfill_assets import catalog, launch

    def dagster(url, query, variables):
        if "launchPartitionBackfill" in query:
            return {"launchPartitionBackfill": {"__typename": "LaunchBackfillSuccess", "backfillId": "bf1"}}
        return {"reportRunlessAssetEvents": {"__typename": "ReportRunlessAssetEventsSuccess"}}

    monkeypatch.setattr(launch, "graphql", dagster)
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(january))
    scope = {"select": "key:revenue_daily", "from": "2025-01-20", "to": "2025-01-31"}
    brief = write_brief(january.parent, scope=scope)
    notes = january.parent / "notes"
    code = cli.main(["launch", brief, "-f", DEFINITIONS, "--branch", "b1", "--json", "--out", str(notes)])
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK
    launched = json.loads(out)  # nothing but the JSON on stdout
    # revenue_daily's 12 days reach January of monthly_revenue and the finance dashboard reading both
    assert (launched["backfill_id"], launched["branch"], launched["notified_assets"]) == ("bf1", "b1", 3)
    before = Path(launched["before_the_run"]).read_text()
    assert "it stages in branch b1" in before and "| revenue_daily | selected | 2025-01-20..2025-01-31 (12) |" in before
    assert "| monthly_revenue | downstream (1) of revenue_daily | 2025-01-01 (1) |" in before
    with duckdb.connect(str(january), read_only=True) as con:
        assert catalog.branch_info(con, "b1")["reviewer"] == "head-of-data@example.com"
