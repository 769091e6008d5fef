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
    assert {page: n for page, n in blocks.items() if n} == {"docs/define-a-table.md": 1}


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
