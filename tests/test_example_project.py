"""The example project (examples/payments) the way a new user meets it: the library's wheel and the project
installed with a plain, non-editable `pip install` into a fresh virtual environment, then driven through the CLI
and `dg dev` only.

The fresh venv gets the third-party dependencies (Dagster, DuckDB, pandas, ...) from this test run's own
environment through a .pth file, because the machines that run the suite may not reach a package index; the
library and the project themselves are installed from their wheels, so the test sees exactly what a wheel ships.
Every expected number comes from Python's Decimal or pandas over the raw payments, never from the library.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import yaml
from dagster_helpers import dagster_dev, graphql, wait_for_backfill

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "payments"
pytestmark = pytest.mark.slow

# A variant of countries_monthly whose SQL returns DOUBLE: held by the schema check, then discarded.
HELPERS = '''
DOUBLE_NET = (
    "SELECT date_trunc('month', day)::DATE AS month, country, sum(gross - fees)::DOUBLE AS net_revenue "
    "FROM payments_daily WHERE day >= $start AND day < $end GROUP BY 1, 2"
)
'''
DOUBLE = '''
import dagster as dg
import helpers  # a sibling module of the working directory, not of this file

import backfill_assets as bfa
from payments.defs import monthly

defs = dg.Definitions(
    assets=[bfa.derived_asset(monthly.monthly_spec, helpers.DOUBLE_NET, deps=["payments_daily"])],
    resources={"warehouse": bfa.Warehouse(database="payments.duckdb")},
)
'''


def _copy_tree(src: Path, dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "data", ".dagster_home", "*.egg-info", "build", "__pycache__")
    shutil.copytree(src, dst, ignore=ignore)
    return dst


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The library's wheel, built from a copy of the whole repository (the reference pipeline included)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = _copy_tree(ROOT, tmp / "src")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp / "dist"), ".", cwd=source)
    (built,) = (tmp / "dist").glob("backfill_assets-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel and the example project installed (not editable)."""
    tmp = tmp_path_factory.mktemp("venv")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = _copy_tree(EXAMPLE, tmp / "payments-src")
    _pip("--python", str(python), "install", "--no-deps", "--no-index", "--no-build-isolation", "--quiet",
         str(wheel), str(project), cwd=tmp)  # fmt: skip
    for name, target in {"dg": "dagster_dg_cli.cli", "dagster": "dagster.cli"}.items():  # the dependencies' scripts
        script = env / "bin" / name
        script.write_text(f"#!{python}\nimport sys\nfrom {target} import main\nsys.exit(main())\n")
        script.chmod(0o755)
    return env


def test_the_wheel_holds_only_the_library_and_its_instance_config(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"backfill_assets"}, sorted(packages)
    assert "backfill_assets/dagster.yaml" in names
    assert not [n for n in names if "product_analytics" in n or n.startswith(("tests/", "examples/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dagster_dg_cli.registry_modules" in zipfile.ZipFile(wheel).read(entry_points).decode()


class Project:
    """The copied example project as the working directory, and the fresh venv's commands."""

    def __init__(self, venv: Path, cwd: Path, home: Path):
        self.bin = venv / "bin"
        self.cwd = cwd
        self.db = cwd / "payments.duckdb"
        # Not this suite's PYTHONPATH (the repository): what the venv has installed, nothing else.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DAGSTER_HOME")}
        self.env.update(PAYMENTS_DB=str(self.db), BACKFILL_ASSETS_DB=str(self.db), DAGSTER_HOME=str(home))

    def run(self, *args: str, expect: int = 0, program: str = "backfill-assets") -> str:
        done = subprocess.run(
            [str(self.bin / program), *args], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=600
        )
        out = done.stdout + done.stderr
        assert done.returncode == expect, f"{args}: exit {done.returncode}\n{out}"
        assert "Traceback" not in out, out
        return out

    def python(self, code: str) -> str:
        return self.run("-c", code, program="python")

    def sql(self, query: str) -> list[tuple]:
        with duckdb.connect(str(self.db), read_only=True) as con:
            return con.execute(query).fetchall()


@pytest.fixture
def project(venv, tmp_path) -> Project:
    cwd = _copy_tree(EXAMPLE, tmp_path / "payments")  # a checkout: pyproject.toml, backfills/ and src/ (not used)
    return Project(venv, cwd, tmp_path / "dagster_home")


def _expected(db: Path) -> tuple[dict, dict]:
    """From the raw payments alone, in Decimal: (day, country) -> (payments, gross, fees), and (month, country) ->
    net revenue (gross minus fees)."""
    with duckdb.connect(str(db), read_only=True) as con:
        raw = con.execute("SELECT paid_at, country, amount, fee FROM raw_payments").fetchall()
    daily: dict = {}
    for paid_at, country, amount, fee in raw:
        n, gross, fees = daily.get((paid_at.date(), country), (0, Decimal(0), Decimal(0)))
        daily[(paid_at.date(), country)] = (n + 1, gross + amount, fees + fee)
    monthly: dict = {}
    for (day, country), (_, gross, fees) in daily.items():
        key = (day.replace(day=1), country)
        monthly[key] = monthly.get(key, Decimal(0)) + gross - fees
    return daily, monthly


def test_a_new_user_walks_the_example_project_from_a_plain_install(project):
    p = project
    # Installed as a user installs it: the venv's own copies, and no reference pipeline.
    where = p.python("import backfill_assets, payments; print(backfill_assets.__file__); print(payments.__file__)")
    assert all(str(p.bin.parent) in line for line in where.split()), where
    missing = subprocess.run(
        [str(p.bin / "python"), "-c", "import product_analytics"], env=p.env, cwd=p.cwd, capture_output=True
    )
    assert missing.returncode == 1

    # The README's three lines of set-up: install (done), a Dagster home, then dg.
    out = p.run("init-instance")
    assert f"wrote {p.env['DAGSTER_HOME']}/dagster.yaml" in out
    pools = yaml.safe_load((Path(p.env["DAGSTER_HOME"]) / "dagster.yaml").read_text())["concurrency"]["pools"]
    assert "default_limit" not in pools  # other pools of the deployment keep Dagster's default
    limit = "import dagster as dg; print(dg.DagsterInstance.get().event_log_storage.get_pool_limits())"
    assert p.python(limit).strip() == "[PoolLimit(name='duckdb', limit=1, from_default=False)]"
    p.run("check", "yaml", program="dg")
    p.run("check", "defs", program="dg")
    assert "country_leaderboard" in p.run("list", "defs", "--json", program="dg")

    p.run("-m", "payments.landing", program="python")
    p.run("materialize", "--select", "payments_daily", "--from", "2025-01-01", "--to", "2025-01-31")

    # A run whose transform returns DOUBLE for a DECIMAL column is held, the summary naming both types ...
    (p.cwd / "helpers.py").write_text(HELPERS)
    (p.cwd / "experiments").mkdir()
    (p.cwd / "experiments" / "double.py").write_text(DOUBLE)
    out = p.run("materialize", "-f", "experiments/double.py", "--from", "2025-01-01", "--to", "2025-01-31", expect=1)
    assert "held, not published" in out and "net_revenue: DOUBLE, declared DECIMAL(18,2)" in out, out
    # ... discarded, and the corrected code publishes over it with no manual step.
    p.run("discard", "countries_monthly", "--by", "ana", "--reason", "DOUBLE is not cents")

    # The default selection is everything, the plain asset too, rebuilt after its parents.
    out = p.run("materialize", "--from", "2025-01-01", "--to", "2025-02-28")
    assert "[3/3] country_leaderboard: materialized" in out, out
    daily, monthly = _expected(p.db)
    got_daily = p.sql("SELECT day, country, payments, gross, fees FROM payments_daily")
    assert {(d, c): (n, g, f) for d, c, n, g, f in got_daily} == {
        k: v for k, v in daily.items() if k[0].month <= 2
    }
    assert p.sql("SELECT typeof(net_revenue) FROM countries_monthly LIMIT 1") == [("DECIMAL(18,2)",)]
    got_monthly = dict(((m, c), v) for m, c, v in p.sql("SELECT month, country, net_revenue FROM countries_monthly"))
    assert got_monthly == {k: v for k, v in monthly.items() if k[0].month <= 2}  # exact cents, from a DataFrame
    board = dict(p.sql("SELECT country, net_revenue FROM country_leaderboard"))
    totals: dict = {}
    for (_, country), v in got_monthly.items():
        totals[country] = totals.get(country, Decimal(0)) + v
    assert board == totals

    # Plan: the plain asset downstream is in the blast radius, whole.
    out = p.run("plan", "--select", "payments_daily+", "--from", "2025-02-01", "--to", "2025-02-28")
    assert any(line.split()[:1] == ["country_leaderboard"] and "whole asset" in line for line in out.splitlines())
    assert "+ 1 unpartitioned asset rebuilt whole" in out
    plan = json.loads(p.run("plan", "--select", "payments_daily+", "--from", "2025-02-01", "--to", "2025-02-28",
                            "--json"))  # fmt: skip
    assert {a["asset"]: a["partition_count"] for a in plan["assets"]} == {
        "payments_daily": 28, "countries_monthly": 1, "country_leaderboard": 0
    }  # fmt: skip

    # Every user error: one line, a non-zero exit, no traceback.
    (p.cwd / "broken.py").write_text("import dagster as dg\nimport not_a_module\n")
    for args, code in [
        (("plan", "--from", "2025-02-30", "--to", "2025-03-01"), 2),
        (("plan", "--select", "no_such_asset", "--from", "2025-02-01", "--to", "2025-02-02"), 2),
        (("plan", "--from", "2025-02-10", "--to", "2025-02-01"), 2),
        (("plan", "-f", "missing.py", "--from", "2025-02-01", "--to", "2025-02-02"), 2),
        (("plan", "-f", "broken.py", "--from", "2025-02-01", "--to", "2025-02-02"), 2),
        (("history", "country_leaderboard"), 2),
        (("rollback", "payments_daily", "--partition", "2024-12-31"), 2),
        (("launch", "backfills/fees-fix-2025-02.yaml", "--url", "http://127.0.0.1:9"), 3),
        (("no-such-command",), 2),
    ]:
        out = p.run(*args, expect=code).strip()
        assert len(out.splitlines()) == 1, f"{args}:\n{out}"
    # A run refused by the warehouse: its progress lines, then the reason in one line.
    out = p.run("materialize", "-f", "experiments/double.py", "--from", "2025-03-01", "--to", "2025-03-31", expect=1)
    assert out.splitlines()[-1].strip().startswith(
        "countries_monthly: column 'net_revenue' is DOUBLE in this run but DECIMAL(18,2) in versions"
    ), out
    assert "not_a_module" in p.run("plan", "-f", "broken.py", "--from", "2025-02-01", "--to", "2025-02-02", expect=2)

    # Launch on `dg dev`: the brief's blast radius, the plain asset included, run by Dagster after its parents.
    with dagster_dev(p.cwd, p.env, command=[str(p.bin / "dg"), "dev"], cwd=p.cwd) as dev:
        out = p.run("launch", "backfills/fees-fix-2025-02.yaml", "--url", dev.url, "--wait", "--poll-seconds", "1")
        assert "29 partitions of 2 assets and 1 unpartitioned asset" in out, out
        backfill_id = out.split("Launched backfill ", 1)[1].split()[0]
        backfill = wait_for_backfill(dev.url, backfill_id)
        assert backfill["status"] == "COMPLETED_SUCCESS", backfill
        runs = [graphql(dev.url, RUN_ASSETS, {"runId": r["runId"]})["runOrError"] for r in backfill["runs"]]
        assert ["country_leaderboard"] in [[k["path"][-1] for k in r["assetSelection"]] for r in runs]
    assert dict(p.sql("SELECT country, net_revenue FROM country_leaderboard")) == totals  # same data, rebuilt


RUN_ASSETS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { assetSelection { path } } } }"


def test_a_bad_field_in_a_yaml_table_fails_dg_check_yaml_naming_it(project):
    yaml_file = project.cwd / "src" / "payments" / "defs" / "payments_daily" / "defs.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("partition_column:", "partition_colum:"))
    out = project.run("check", "yaml", program="dg", expect=1)
    assert "'partition_colum' was unexpected" in out and "'partition_column' is a required property" in out, out


def test_the_reference_project_passes_dg_check_yaml_check_defs_and_list_defs(tmp_path):
    dg = Path(sys.executable).parent / "dg"
    env = {**os.environ, "BACKFILL_ASSETS_DB": str(tmp_path / "warehouse.duckdb"), "DAGSTER_HOME": str(tmp_path)}
    for args in (["check", "yaml"], ["check", "defs"]):
        done = subprocess.run([str(dg), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([str(dg), "list", "defs", "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listed = {a["asset_key"] for a in json.loads(done.stdout)["assets"]}
    from product_analytics.tables import SPECS  # what the reference pipeline declares, YAML table included

    assert {s.name for s in SPECS} <= listed and "weekly_active_users" in listed
