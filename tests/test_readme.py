"""The documentation's table example works as written (docs/define-a-table.md, linked from the README)."""

import re
from pathlib import Path

import duckdb
from conftest import check_evaluations, published, run_range

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "define-a-table.md"
PYTHON_BLOCK = re.compile(r"^ *```python\n(.*?)^ *```", re.S | re.M)


def test_the_table_example_is_the_only_python_in_the_docs():
    """Every Python block of the README and docs/ is run: a new one needs a test of its own here."""
    blocks = {
        page.relative_to(ROOT).as_posix(): len(PYTHON_BLOCK.findall(page.read_text()))
        for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    }
    assert {page: n for page, n in blocks.items() if n} == {"docs/define-a-table.md": 1, "README.md": 1}


def test_the_readmes_project_example_is_the_example_project_the_suite_installs_and_runs():
    """The README's YAML table and definitions.py are examples/payments' own files, word for word, which
    tests/test_example_project.py installs and runs end to end."""
    readme = (ROOT / "README.md").read_text().split("## Use it in your own project", 1)[1].split("\n## ", 1)[0]
    project = ROOT / "examples" / "payments" / "src" / "payments"
    yaml_block = re.search(r"^```yaml\n(.*?)^```", readme, re.S | re.M).group(1)
    assert yaml_block == (project / "defs" / "payments_daily" / "defs.yaml").read_text()
    assert PYTHON_BLOCK.search(readme).group(1) == (project / "definitions.py").read_text()
    setup = re.search(r"^```bash\n(.*?)^```", readme, re.S | re.M).group(1)
    assert len(setup.splitlines()) <= 3


def test_define_your_own_derived_table_example_runs(tmp_path, monkeypatch):
    code = PYTHON_BLOCK.search(EXAMPLE.read_text()).group(1)
    db = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE payments AS SELECT DATE '2025-01-01' + (i % 3)::INT AS paid_on, "
        "['DE', 'FR'][1 + i % 2] AS country, (i * 1.25)::DECIMAL(18, 2) AS amount FROM range(60) t(i)"
    )
    con.close()
    namespace: dict = {}
    exec(compile(code, str(EXAMPLE), "exec"), namespace)  # noqa: S102 (our own documentation)

    result = run_range(namespace["defs"], ["orders_daily"], "2025-01-01", "2025-01-03")

    assert result.success
    assert check_evaluations(result) == {
        ("orders_daily", c): True for c in ("inputs_complete", "unique_grain", "complete", "reconciled", "schema")
    }
    assert {k: n for k, (_, n, _) in published(db, "orders_daily").items()} == {
        "2025-01-01": 2,
        "2025-01-02": 2,
        "2025-01-03": 2,
    }
