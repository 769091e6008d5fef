"""Bad input, a corpus: malformed source rows, SQL injection in every place a user types text, unknown assets,
bad ranges, malformed briefs, a missing warehouse, a full disk. Each case must end in one clear error line and
a usage exit code, or in a failed check; and what consumers read must be exactly as before."""

import gzip
import os
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from conftest import DAILY, check_evaluations, make_defs, run_range, step_failures

import backfill_assets as bfa
from backfill_assets import cli
from product_analytics import source, tables

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = str(ROOT / "definitions.py")
REFUNDS = ROOT / "backfills" / "refunds-fix-2025q1.yaml"
INJECTION = "x'); DROP TABLE bfa.published; --"


def fingerprint(db: Path) -> dict[str, tuple]:
    """What consumers read, per table: the publish pointers and a hash of the rows the view returns."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            t: (
                con.execute(
                    "SELECT list((partition_key, version) ORDER BY partition_key) FROM bfa.published WHERE asset = ?",
                    [t],
                ).fetchall(),
                con.execute(f"SELECT count(*), sum(hash(*COLUMNS(*))) FROM main.{t}").fetchall(),
            )
            for t in DAILY
        }
    finally:
        con.close()


@pytest.fixture
def db(january, monkeypatch):
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(january))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return january


# --- the command line --------------------------------------------------------------------------------------

RANGE = ["--from", "2025-01-02", "--to", "2025-01-03"]
CLI_CASES = {
    "unparsable date": (["materialize", "--from", "2025-13-01", "--to", "2025-01-02"], "not a date"),
    "inverted range": (["materialize", "--from", "2025-01-05", "--to", "2025-01-02"], "is after --to"),
    "range before the first partition": (["materialize", "--from", "2024-12-30", "--to", "2025-01-02"], "before"),
    "range in the future": (["materialize", "--from", "2999-01-01", "--to", "2999-01-02"], "in the future"),
    "unknown asset": (["materialize", *RANGE, "--select", "key:no_such_table"], "matches no"),
    "injection in a selection": (["materialize", *RANGE, "--select", f"key:{INJECTION}"], "--select"),
    "plan: inverted range": (
        ["plan", "--select", "key:sessions", "--from", "2025-02-01", "--to", "2025-01-01"],
        "after",
    ),
    "plan: injection in a selection": (["plan", "--select", INJECTION, *RANGE], "--select"),
    "history: unknown asset": (["history", "no_such_table"], "unknown asset 'no_such_table'"),
    "history: injection in the asset": (["history", f"raw_events{INJECTION}"], "unknown asset"),
    "history: injection in the partition": (["history", "raw_events", "--partition", INJECTION], "no partition"),
    "diff: injection in the partition": (["diff", "sessions", "--partition", INJECTION], "no partition"),
    "diff: injection in --base": (["diff", "sessions", "--partition", "2025-01-02", "--base", INJECTION], "--base"),
    "diff: a version of another table": (
        ["diff", "sessions", "--partition", "2025-01-02", "--base", "1"],
        "not a version of sessions",
    ),
    "rollback: injection in the partition": (["rollback", "sessions", "--partition", INJECTION], "no partition"),
    "rollback: unknown version": (
        ["rollback", "sessions", "--partition", "2025-01-02", "--to-version", "999999"],
        "999999",
    ),
    "rollback: nothing to roll back to": (["rollback", "sessions", "--partition", "2025-01-02"], "Nothing was changed"),
    "approve: nothing held": (["approve", "sessions", *RANGE, "--by", "me", "--reason", INJECTION], "no held"),
    "discard: injection in the asset": (["discard", INJECTION, "--by", "me", "--reason", "r"], "unknown asset"),
    "cutover: not a parallel table": (["cutover", "sessions", *RANGE], "parallel_version"),
    "notes: unknown brief": (["notes", "--brief", INJECTION], "no publish or hold recorded"),
    "definitions file missing": (["history", "sessions", "-f", "nowhere.py"], "no definitions file at nowhere.py"),
}


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_cli_refuses_with_one_line_and_changes_nothing(db, capsys, case):
    argv, message = CLI_CASES[case]
    before = fingerprint(db)
    if "-f" not in argv:
        argv = [*argv, "-f", DEFINITIONS]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: usage line + one error line
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USAGE, err
    assert err and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert fingerprint(db) == before


# --- briefs ------------------------------------------------------------------------------------------------


def _brief(tmp_path: Path, text: str | None = None, **changes) -> str:
    brief = yaml.safe_load(REFUNDS.read_text())
    brief.update(changes)
    path = tmp_path / f"{brief['id'] if isinstance(brief.get('id'), str) and '/' not in brief['id'] else 'b'}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(brief, sort_keys=False))
    return str(path)


BRIEF_CASES = {
    "malformed YAML": ({"text": "id: [unclosed\ntitle: x"}, "not valid YAML"),
    "not a mapping": ({"text": "- a\n- list\n"}, "mapping"),
    "injection in the id": ({"id": INJECTION}, "must match"),
    "injection in the selection": ({"scope": {"select": INJECTION, "from": "2025-01-01", "to": "2025-01-31"}}, "FAIL"),
    "injection in a date": ({"scope": {"select": "key:revenue_daily", "from": INJECTION, "to": "2025-01-31"}}, "FAIL"),
    "injection in the stakeholders": ({"stakeholders": [INJECTION]}, "not among the stakeholders"),
    "unknown write strategy": ({"write_strategy": f"append{INJECTION}"}, "FAIL"),
    "unknown asset": ({"scope": {"select": "key:no_such_table", "from": "2025-01-01", "to": "2025-01-31"}}, "FAIL"),
}


@pytest.mark.parametrize("case", BRIEF_CASES, ids=list(BRIEF_CASES))
def test_bad_briefs_fail_preflight_and_change_nothing(db, tmp_path, capsys, case):
    changes, message = BRIEF_CASES[case]
    before = fingerprint(db)
    code = cli.main(["preflight", _brief(tmp_path, **changes), "-f", DEFINITIONS])
    out = capsys.readouterr()
    assert code in (cli.EXIT_HELD, cli.EXIT_USAGE)
    assert message in out.out + out.err
    assert "Traceback" not in out.out + out.err
    assert fingerprint(db) == before


# --- malformed source rows: the checks hold them ----------------------------------------------------------


def _corrupted_raw(corruption: str):
    """raw_events whose transform passes the generated rows through `corruption` (SQL over ``_generated``)."""

    def transform(ctx: bfa.TransformContext):
        source.raw_events(ctx).create_view("_generated", replace=True)
        return ctx.con.sql(corruption)

    return bfa.derived_asset(tables.raw_events_spec, transform, params={"events_per_day": source.events_per_day()})


SOURCE_CASES = {
    "NULL event ids": (
        "SELECT * REPLACE (if(hash(delivery_id) % 7 = 0, NULL, event_id) AS event_id) FROM _generated",
        "complete",
    ),
    "NULL delivery ids": (
        "SELECT * REPLACE (if(hash(delivery_id) % 7 = 0, NULL, delivery_id) AS delivery_id) FROM _generated",
        "unique_grain",
    ),
    "duplicate deliveries": ("SELECT * FROM _generated UNION ALL (SELECT * FROM _generated LIMIT 3)", "unique_grain"),
    "unparsable timestamps": ("SELECT * REPLACE ('yesterday-ish' AS client_ts) FROM _generated", "in this run but"),
    "future timestamps": (
        "SELECT * REPLACE (if(hash(delivery_id) % 50 = 0, TIMESTAMP '2031-01-01', client_ts) AS client_ts) "
        "FROM _generated",
        "event_time_plausible",
    ),
    "negative amounts": ("SELECT * REPLACE (-amount AS amount) FROM _generated", "amounts_valid"),
    "absurd amounts": (
        "SELECT * REPLACE (if(amount IS NULL, NULL, 9999999.99)::DECIMAL(18, 2) AS amount) FROM _generated",
        "amounts_valid",
    ),
    "unknown currency": (
        "SELECT * REPLACE (if(currency IS NULL, NULL, 'XBT') AS currency) FROM _generated",
        "amounts_valid",
    ),
    "renamed column": ("SELECT * EXCLUDE (currency), currency AS currency_code FROM _generated", "schema"),
    "missing column": ("SELECT * EXCLUDE (refund_of) FROM _generated", "schema"),
}


@pytest.mark.parametrize("case", SOURCE_CASES, ids=list(SOURCE_CASES))
def test_malformed_source_rows_are_held(db, case):
    corruption, check = SOURCE_CASES[case]
    before = fingerprint(db)
    assets = [_corrupted_raw(corruption)]
    result = run_range(make_defs(db, assets), ["raw_events"], "2025-01-02", "2025-01-03")
    assert not result.success
    failures = step_failures(result)
    assert len(failures) == 1 and check in failures[0], failures
    assert fingerprint(db) == before


# --- the warehouse file --------------------------------------------------------------------------------


def test_missing_warehouse_is_reported_and_not_created(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere" / "warehouse.duckdb"
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(missing))
    for argv in (["history", "sessions"], ["vacuum"], ["plan", "--stale"]):
        assert cli.main([*argv, "-f", DEFINITIONS]) == cli.EXIT_USAGE
        assert "no warehouse with published data" in capsys.readouterr().err
    assert not missing.exists()


@contextmanager
def read_only(path: Path):
    """Make `path` unwritable for this process: chmod for a normal user; root ignores modes, so for root the
    file is made immutable (chattr +i) for the duration."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: cannot make a file read-only here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_warehouse_fails_clearly_and_changes_nothing(db, capsys):
    before = fingerprint(db)
    with read_only(db):
        code = cli.main(["materialize", "-f", DEFINITIONS, "--select", "key:raw_events", *RANGE])
        out = capsys.readouterr()
        assert code == cli.EXIT_HELD
        assert f"cannot open DuckDB file {db} for writing" in out.out and "Nothing was changed" in out.out
        assert cli.main(["rollback", "sessions", "--partition", "2025-01-02", "-f", DEFINITIONS]) == cli.EXIT_USAGE
        assert "cannot open DuckDB file" in capsys.readouterr().err
    assert fingerprint(db) == before


def test_a_warehouse_a_newer_duckdb_wrote_is_refused_in_one_line_and_left_as_it_was(tmp_path, monkeypatch, capsys):
    """tests/fixtures/written_by_duckdb_2_0.duckdb.gz is a one-table file DuckDB 2.0.0 wrote (storage version 999,
    which 1.5.5 cannot read; regenerate it with duckdb 2.0: CREATE TABLE t AS SELECT 1 AS x, then gzip -9)."""
    db = tmp_path / "w.duckdb"
    fixture = Path(__file__).parent / "fixtures" / "written_by_duckdb_2_0.duckdb.gz"
    db.write_bytes(gzip.decompress(fixture.read_bytes()))
    before = db.read_bytes()
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    assert cli.main(["history", "sessions", "-f", DEFINITIONS]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"DuckDB file {db} was written by a newer DuckDB" in err
    assert duckdb.__version__ in err and "nothing was changed" in err
    assert db.read_bytes() == before


def _materialize_with_file_size_limit(db: Path, limit_bytes: int) -> subprocess.CompletedProcess:
    """The CLI with RLIMIT_FSIZE: a write past the limit fails with EFBIG, as on a full disk."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "BACKFILL_ASSETS_DB": str(db), "BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY": "3000"}
    cli_path = Path(sys.executable).parent / "backfill-assets"
    argv = [
        "materialize",
        "-f",
        DEFINITIONS,
        "--select",
        "key:raw_events",
        "--from",
        "2025-01-01",
        "--to",
        "2025-01-31",
    ]
    return subprocess.run(
        [cli_path, *argv],
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_full_disk_fails_the_run_and_loses_nothing(db):
    before = fingerprint(db)
    done = _materialize_with_file_size_limit(db, db.stat().st_size + 256 * 1024)
    assert done.returncode != 0
    assert "File too large" in done.stdout + done.stderr or "held" not in done.stdout
    assert fingerprint(db) == before


def test_a_notebook_holding_the_file_makes_runs_wait_then_fail_clearly(db):
    before = fingerprint(db)
    cli_path = str(Path(sys.executable).parent / "backfill-assets")
    argv = [cli_path, "materialize", "-v", "-f", DEFINITIONS, "--select", "key:raw_events", *RANGE]
    env = {**os.environ, "BACKFILL_ASSETS_DB": str(db), "BACKFILL_ASSETS_LOCK_TIMEOUT_S": "4"}
    env.pop("DAGSTER_HOME", None)

    notebook = duckdb.connect(str(db))  # holds DuckDB's single write lock until closed
    try:
        refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    finally:
        notebook.close()
    assert refused.returncode == cli.EXIT_HELD
    output = refused.stdout + refused.stderr
    assert "Waiting for the DuckDB write lock" in output
    assert "stayed locked by another process for 4s" in output and "Nothing was changed" in output
    assert fingerprint(db) == before

    notebook = duckdb.connect(str(db))
    env.update(BACKFILL_ASSETS_LOCK_TIMEOUT_S="120", PYTHONUNBUFFERED="1")
    waiting = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in waiting.stdout:  # the run says it waits ...
            seen.append(line)
            if "Waiting for the DuckDB write lock" in line:
                break
    finally:
        notebook.close()  # ... and once the notebook lets go, within the timeout, it goes on
    out = "".join(seen) + waiting.communicate(timeout=300)[0]
    assert waiting.returncode == cli.EXIT_OK, out
    assert "Waiting for the DuckDB write lock" in out and "published" in out
    assert fingerprint(db) != before


# --- personal data ---------------------------------------------------------------------------------------

PSEUDONYM = "sha256($salt || coalesce('u:' || user_id, 'a:' || anonymous_id))"
LEAKS = {
    "raw user ids": ("coalesce(user_id, anonymous_id)", "values like raw user id"),
    "emails": (f"coalesce(email, {PSEUDONYM})", "values like email address"),
}


@pytest.mark.parametrize("leak", LEAKS, ids=list(LEAKS))
def test_personal_data_never_reaches_a_derived_table(db, leak):
    expression, finding = LEAKS[leak]
    assert PSEUDONYM in tables.EVENTS_CLEAN_SQL
    leaky = bfa.derived_asset(
        tables.events_clean_spec,
        tables.EVENTS_CLEAN_SQL.replace(PSEUDONYM, expression),
        deps=[dg.AssetDep("raw_events", partition_mapping=dg.TimeWindowPartitionMapping(0, 3))],
        params={"salt": "test-salt"},
    )
    before = fingerprint(db)
    result = run_range(make_defs(db, [leaky]), ["events_clean"], "2025-01-02", "2025-01-05")
    assert not result.success
    assert {c for c, passed in check_evaluations(result).items() if not passed} == {
        ("events_clean", "no_personal_data")
    }
    (message,) = step_failures(result)
    assert "column actor_key" in message and finding in message
    assert "@example.com" not in message and " u1" not in message  # findings name columns, never values
    assert fingerprint(db) == before
