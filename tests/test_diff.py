"""diff_relations: example cases, and a property test against an independent pure-Python reference."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill_assets.diff import DiffResult, diff_relations, render_diff
from backfill_assets.spec import SpecError

# ---------------------------------------------------------------------------------------------------------------
# Property test: random relations, every figure checked against a reference computed in plain Python.
# ---------------------------------------------------------------------------------------------------------------

PANDAS_DTYPE = {"int": "Int64", "float": "Float64", "str": "string"}
DUCKDB_TYPE = {"int": "BIGINT", "float": "DOUBLE", "str": "VARCHAR"}

KEY_VALUES = st.one_of(st.none(), st.integers(0, 3))
VALUES = {
    "int": st.one_of(st.none(), st.integers(-2, 2), st.integers(-(2**62), 2**62)),
    "float": st.one_of(
        st.none(),
        st.sampled_from([0.0, 1.5, -2.25, 1e-300, 1e300]),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    "str": st.one_of(st.none(), st.sampled_from(["", "0", "1", "-1", "2", "a", "B", "é"]), st.text(max_size=3)),
}


@dataclass
class Side:
    """One generated relation: column name -> kind ("int", "float", "str"), in column order, and its rows."""

    columns: dict[str, str]
    rows: list[dict[str, Any]]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {c: pd.array([r[c] for r in self.rows], dtype=PANDAS_DTYPE[k]) for c, k in self.columns.items()}
        )


def _convert(value: Any, kind: str) -> tuple[bool, Any]:
    """A base value carried into a target column of `kind`: (possible, value)."""
    if value is None or isinstance(value, str) == (kind == "str"):
        return True, value
    if kind == "str":
        return True, str(value)
    try:
        return True, int(value)
    except ValueError:
        return False, None


@st.composite
def scenarios(draw) -> tuple[Side, Side, list[str], int]:
    keys = ["k1"] if draw(st.booleans()) else ["k1", "k2"]
    # value columns: (base kind or None when absent, target kind or None when absent)
    specs: dict[str, tuple[str | None, str | None]] = {}
    for name, kind in (("v_int", "int"), ("v_float", "float"), ("v_str", "str"), ("v_int2", "int")):
        presence = draw(st.sampled_from(["both", "both", "both", "base", "target"]))
        specs[name] = (kind if presence != "target" else None, kind if presence != "base" else None)
    if draw(st.booleans()):  # a column whose type differs between the sides: int vs string
        b, t = draw(st.sampled_from([("int", "str"), ("str", "int")]))
        specs["v_changed"] = (b, t)
    base_order = draw(st.permutations([*keys, *[c for c, (b, _) in specs.items() if b]]))
    target_order = draw(st.permutations([*keys, *[c for c, (_, t) in specs.items() if t]]))
    base_kinds = {c: ("int" if c in keys else specs[c][0]) for c in base_order}
    target_kinds = {c: ("int" if c in keys else specs[c][1]) for c in target_order}

    def new_row(kinds: dict[str, str]) -> dict[str, Any]:
        return {c: draw(KEY_VALUES if c in keys else VALUES[k]) for c, k in kinds.items()}

    base_rows = [new_row(base_kinds) for _ in range(draw(st.integers(0, 10)))]
    target_rows = []
    for row in base_rows:  # most base rows carried over, some with changed values, some dropped
        action = draw(st.sampled_from(["copy", "copy", "mutate", "drop"]))
        if action == "drop":
            continue
        fresh = new_row(target_kinds)
        carried = {}
        for c, kind in target_kinds.items():
            ok, value = _convert(row[c], kind) if c in row else (False, None)
            mutate = action == "mutate" and c not in keys and draw(st.booleans())
            carried[c] = value if ok and not mutate else fresh[c]
        target_rows.append(carried)
    target_rows += [new_row(target_kinds) for _ in range(draw(st.integers(0, 5)))]
    target_rows = draw(st.permutations(target_rows))
    return Side(base_kinds, base_rows), Side(target_kinds, target_rows), keys, draw(st.integers(0, 6))


def _same(a: Any, b: Any) -> bool:
    """NULL-safe equality: None equals None and nothing else."""
    if a is None or b is None:
        return a is None and b is None
    return a == b


def _as_varchar(value: Any) -> Any:
    """CAST(value AS VARCHAR) for the ints and strings generated above."""
    return None if value is None else str(value)


def reference(base: Side, target: Side, keys: list[str], sample_size: int) -> dict[str, Any]:
    """The documented semantics, computed row by row in Python."""

    def key_of(row: dict[str, Any]) -> tuple:
        return tuple(row[k] for k in keys)

    n_base = Counter(key_of(r) for r in base.rows)
    n_target = Counter(key_of(r) for r in target.rows)
    both = set(n_base) & set(n_target)
    matched_keys = [k for k in both if n_base[k] == 1 and n_target[k] == 1]
    compared = [c for c in base.columns if c in target.columns and c not in keys]
    changed = {c for c in base.columns if c in target.columns and base.columns[c] != target.columns[c]}
    base_by_key = {key_of(r): r for r in base.rows if n_base[key_of(r)] == 1}
    target_by_key = {key_of(r): r for r in target.rows if n_target[key_of(r)] == 1}

    equal_counts = dict.fromkeys(compared, 0)
    full = 0
    differing: list[tuple[tuple, int, dict[str, Any]]] = []
    for key in matched_keys:
        b, t = base_by_key[key], target_by_key[key]
        all_equal = True
        for i, c in enumerate(compared):
            bv, tv = (_as_varchar(b[c]), _as_varchar(t[c])) if c in changed else (b[c], t[c])
            if _same(bv, tv):
                equal_counts[c] += 1
            else:
                all_equal = False
                entry = {**dict(zip(keys, key, strict=True)), "column": c, "base": b[c], "target": t[c]}
                differing.append((key, i, entry))
        full += all_equal
    # ORDER BY keys ASC NULLS LAST, then the column order of base
    differing.sort(key=lambda d: (tuple((v is None, v if v is not None else 0) for v in d[0]), d[1]))
    matched = len(matched_keys)
    return {
        "added_columns": [(c, DUCKDB_TYPE[k]) for c, k in target.columns.items() if c not in base.columns],
        "removed_columns": [(c, DUCKDB_TYPE[k]) for c, k in base.columns.items() if c not in target.columns],
        "type_changes": [
            (c, DUCKDB_TYPE[base.columns[c]], DUCKDB_TYPE[target.columns[c]]) for c in base.columns if c in changed
        ],
        "base_rows": len(base.rows),
        "target_rows": len(target.rows),
        "base_duplicate_keys": sum(1 for n in n_base.values() if n > 1),
        "target_duplicate_keys": sum(1 for n in n_target.values() if n > 1),
        "matched": matched,
        "ambiguous": sum(1 for k in both if n_base[k] > 1 or n_target[k] > 1),
        "base_only": len(set(n_base) - set(n_target)),
        "target_only": len(set(n_target) - set(n_base)),
        "full_matches": full,
        "partial_matches": matched - full,
        "column_match_rates": {c: (equal_counts[c] / matched if matched else None) for c in compared},
        "samples": [entry for _, _, entry in differing[:sample_size]],
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_diff_matches_reference(scenario):
    base, target, keys, sample_size = scenario
    con = duckdb.connect()
    try:
        con.register("base_rel", base.frame())
        con.register("target_rel", target.frame())
        result = diff_relations(con, "base_rel", "target_rel", keys, sample_size=sample_size)
    finally:
        con.close()
    expected = reference(base, target, keys, sample_size)
    assert result.keys == keys
    for name, value in expected.items():
        assert getattr(result, name) == value, name
    assert list(result.column_match_rates) == list(expected["column_match_rates"])  # base's column order
    distinct_base = len({tuple(r[k] for k in keys) for r in base.rows})
    base_in_both = distinct_base - result.base_only - result.matched
    assert 0 <= base_in_both <= result.ambiguous


# ---------------------------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------------------------

ORDERS = [(1, "a", 10, 1.5), (2, "b", 20, 2.5), (3, "c", 30, None), (4, None, 40, 4.0)]


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


def _table(con, name: str, ddl: str, rows: list[tuple]) -> None:
    con.execute(f"CREATE TABLE {name} ({ddl})")
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        con.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)


def _orders(con, name: str, rows: list[tuple] = ORDERS) -> None:
    _table(con, name, "id INTEGER, customer VARCHAR, amount INTEGER, score DOUBLE", rows)


def test_identical_relations_match_fully(con):
    _orders(con, "base")
    _orders(con, "target")
    r = diff_relations(con, "base", "target", ["id"])
    assert (r.base_rows, r.target_rows, r.matched, r.full_matches, r.partial_matches) == (4, 4, 4, 4, 0)
    assert (r.ambiguous, r.base_only, r.target_only, r.base_duplicate_keys, r.target_duplicate_keys) == (0,) * 5
    assert r.column_match_rates == {"customer": 1.0, "amount": 1.0, "score": 1.0}
    assert (r.added_columns, r.removed_columns, r.type_changes, r.samples) == ([], [], [], [])


def test_changed_value_is_a_partial_match_with_sample(con):
    _orders(con, "base")
    _orders(con, "target", [(1, "a", 10, 1.5), (2, "b", 25, 2.5), (3, "c", 30, 0.0), (4, None, 40, 4.0)])
    r = diff_relations(con, "base", "target", ["id"])
    assert (r.matched, r.full_matches, r.partial_matches) == (4, 2, 2)
    assert r.column_match_rates == {"customer": 1.0, "amount": 0.75, "score": 0.75}
    assert r.samples == [
        {"id": 2, "column": "amount", "base": 20, "target": 25},
        {"id": 3, "column": "score", "base": None, "target": 0.0},
    ]
    assert diff_relations(con, "base", "target", ["id"], sample_size=1).samples == r.samples[:1]
    assert diff_relations(con, "base", "target", ["id"], sample_size=0).samples == []


def test_float_values_compare_exactly(con):
    _orders(con, "base")
    con.execute("CREATE TEMP VIEW target AS SELECT id, customer, amount, score + 1e-12 AS score FROM base")
    r = diff_relations(con, "base", "target", ["id"])
    assert r.column_match_rates["score"] == 0.25  # only the NULL score still matches


def test_added_removed_and_retyped_columns(con):
    _orders(con, "base")
    con.execute(
        "CREATE VIEW target AS SELECT id, CAST(amount AS VARCHAR) AS amount, customer, 'x' AS channel FROM base"
    )
    r = diff_relations(con, "base", "target", ["id"])
    assert r.added_columns == [("channel", "VARCHAR")]
    assert r.removed_columns == [("score", "DOUBLE")]
    assert r.type_changes == [("amount", "INTEGER", "VARCHAR")]
    assert r.column_match_rates == {"customer": 1.0, "amount": 1.0}  # compared as VARCHAR, in base's order
    assert r.full_matches == 4


def test_duplicate_keys_are_reported_and_not_compared(con):
    _orders(con, "base", [*ORDERS, (2, "b", 21, 2.5), (2, "b", 22, 2.5), (5, "e", 50, 5.0)])
    _orders(con, "target", [*ORDERS, (1, "a", 11, 1.5), (6, "f", 60, 6.0)])
    r = diff_relations(con, "base", "target", ["id"])
    assert (r.base_rows, r.target_rows) == (7, 6)
    assert (r.base_duplicate_keys, r.target_duplicate_keys) == (1, 1)
    assert (r.matched, r.ambiguous, r.base_only, r.target_only) == (2, 2, 1, 1)
    assert (r.full_matches, r.partial_matches) == (2, 0)


def test_null_keys_match_each_other(con):
    rows = [(None, None, 1, 1.0), (None, "x", 2, 2.0), (1, None, 3, 3.0)]
    _orders(con, "base", rows)
    _orders(con, "target", [(None, None, 1, 1.0), (None, "x", 9, 2.0), (1, None, 3, 3.0)])
    r = diff_relations(con, "base", "target", ["id", "customer"])
    assert (r.matched, r.base_only, r.target_only, r.full_matches) == (3, 0, 0, 2)
    assert r.samples == [{"id": None, "customer": "x", "column": "amount", "base": 2, "target": 9}]
    _orders(con, "dup_nulls", [*rows, (None, None, 5, 5.0)])
    r = diff_relations(con, "dup_nulls", "target", ["id", "customer"])
    assert (r.base_duplicate_keys, r.matched, r.ambiguous) == (1, 2, 1)


def test_null_values_compare_null_safe(con):
    _orders(con, "base", [(1, None, None, None), (2, None, 1, None)])
    _orders(con, "target", [(1, None, None, None), (2, "b", None, 0.0)])
    r = diff_relations(con, "base", "target", ["id"])
    assert r.column_match_rates == {"customer": 0.5, "amount": 0.5, "score": 0.5}
    assert [s["column"] for s in r.samples] == ["customer", "amount", "score"]


def test_key_with_different_types_is_compared_as_varchar(con):
    _table(con, "base", "id INTEGER, v INTEGER", [(1, 1), (2, 2), (None, 3)])
    _table(con, "target", "id VARCHAR, v INTEGER", [("1", 1), ("2", 5), (None, 3), ("02", 2)])
    r = diff_relations(con, "base", "target", ["id"])
    assert r.type_changes == [("id", "INTEGER", "VARCHAR")]
    assert (r.matched, r.full_matches, r.target_only) == (3, 2, 1)
    assert r.samples == [{"id": "2", "column": "v", "base": 2, "target": 5}]


def test_empty_relations(con):
    _orders(con, "base", [])
    _orders(con, "target", [(1, "a", 10, 1.5)])
    r = diff_relations(con, "base", "target", ["id"])
    assert (r.base_rows, r.target_rows, r.matched, r.target_only, r.full_matches) == (0, 1, 0, 1, 0)
    assert r.column_match_rates == {"customer": None, "amount": None, "score": None}
    assert "customer" in render_diff(r)


def test_invalid_identifiers_raise_spec_error(con):
    _orders(con, "base")
    with pytest.raises(SpecError):
        diff_relations(con, 'base"; DROP TABLE base; --', "base", ["id"])
    with pytest.raises(SpecError):
        diff_relations(con, "base", "base", ["id; x"])
    assert con.execute("SELECT count(*) FROM base").fetchall() == [(4,)]


def test_missing_key_raises_value_error(con):
    _orders(con, "base")
    con.execute("CREATE VIEW target AS SELECT customer, amount FROM base")
    with pytest.raises(ValueError, match="'id'.*'target'"):
        diff_relations(con, "base", "target", ["id"])
    with pytest.raises(ValueError, match="'nope'.*'base'"):
        diff_relations(con, "base", "base", ["nope"])
    with pytest.raises(ValueError, match="at least one key"):
        diff_relations(con, "base", "base", [])


def test_render_diff_reports_everything(con):
    _orders(con, "base", [*ORDERS, (2, "b", 21, 2.5)])
    con.execute("CREATE VIEW target AS SELECT id, customer, amount + (id = 1)::INTEGER AS amount, 1 AS extra FROM base")
    r = diff_relations(con, "base", "target", ["id"])
    text = render_diff(r)
    for fragment in (
        "+ extra INTEGER",
        "- score DOUBLE",
        "base: 5, target: 5",
        "matched one to one): 3",
        "ambiguous, not compared): 1",
        "duplicated keys: base 1, target 1",
        "full matches: 2 (66.7%)",
        "partial matches: 1 (33.3%)",
        "amount    66.7%",
        "customer  100.0%",
        "(id=1) amount: 10 -> 11",
    ):
        assert fragment in text, fragment
    assert isinstance(r, DiffResult)


def test_relation_and_column_names_like_internal_aliases(con):
    ddl = "_k0 INTEGER, _c0 INTEGER, _nb INTEGER, _side_b INTEGER"
    _table(con, "_b", ddl, [(1, 1, 1, 1), (1, 2, 2, 2), (3, 3, 3, 3)])
    _table(con, "_t", ddl, [(1, 1, 1, 1), (1, 2, 2, 9), (3, 3, 3, 3)])
    r = diff_relations(con, "_b", "_t", ["_c0"])
    assert (r.matched, r.full_matches) == (3, 2)
    assert r.column_match_rates == {"_k0": 1.0, "_nb": 1.0, "_side_b": 2 / 3}
    assert r.samples == [{"_c0": 2, "column": "_side_b", "base": 2, "target": 9}]
    r = diff_relations(con, "_b", "_t", ["_k0"])
    assert (r.matched, r.ambiguous, r.base_duplicate_keys) == (1, 1, 1)
