"""The README's example works as written."""

import re
from pathlib import Path

import duckdb
from conftest import check_evaluations, published, run_range

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_define_your_own_derived_table_example_runs(tmp_path, monkeypatch):
    section = README.split("## Define your own derived table", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    db = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("BACKFILL_ASSETS_DB", str(db))
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE payments AS SELECT DATE '2025-01-01' + (i % 3)::INT AS paid_on, "
        "['DE', 'FR'][1 + i % 2] AS country, (i * 1.25)::DECIMAL(18, 2) AS amount FROM range(60) t(i)"
    )
    con.close()
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own documentation)

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
