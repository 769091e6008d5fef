import dagster as dg
import pytest

from backfill_assets import Column, Invariant, Pattern, Reconcile, SpecError, TableSpec, quote_ident

DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01")


def spec(**overrides) -> TableSpec:
    fields = dict(
        name="t",
        partitions=DAILY,
        partition_column="d",
        grain=["id"],
        columns={"id": Column("BIGINT"), "d": Column("DATE")},
        code_version="1",
    )
    return TableSpec(**{**fields, **overrides})


@pytest.mark.parametrize("name", ["events", "_x", "A1_b"])
def test_quote_ident_accepts_plain_names(name):
    assert quote_ident(name) == f'"{name}"'


@pytest.mark.parametrize("name", ['x"; DROP TABLE t; --', "1abc", "a b", "", "a.b", "naïve", "x'--", None])
def test_quote_ident_refuses_anything_else(name):
    with pytest.raises(SpecError, match="not a valid identifier"):
        quote_ident(name)


def test_valid_spec_derives_single_run_backfill_policy():
    s = spec()
    assert s.backfill_policy == dg.BackfillPolicy.single_run()
    assert spec(partitions_per_run=7).backfill_policy == dg.BackfillPolicy.multi_run(7)
    assert s.key == dg.AssetKey("t")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "bad name"}, "not a valid identifier"),
        ({"grain": []}, "declare the grain"),
        ({"grain": ["missing"]}, "not among the declared columns"),
        ({"columns": {"id": Column("BIGINT"), "d": Column("VARCHAR")}}, "must be DATE, TIMESTAMP or TIMESTAMPTZ"),
        (
            {"partitions": dg.MultiPartitionsDefinition({"a": dg.StaticPartitionsDefinition(["x"]),
                                                         "b": dg.StaticPartitionsDefinition(["y"])})},
            "one time dimension and one static",
        ),  # fmt: skip
        ({"partitions": dg.MultiPartitionsDefinition({"day": DAILY, "r": dg.StaticPartitionsDefinition(["x"])})},
         "partition_column must map each dimension"),  # fmt: skip
        ({"rules": [Reconcile("r", "nope", "SELECT 1, 1")]}, "unknown metric 'nope'"),
        ({"rules": [Invariant("r", "SELECT 1"), Invariant("r", "SELECT 2")]}, "rule names must be unique"),
        ({"partitions_per_run": 0}, "at least 1"),
        ({"partitions_per_write": 0}, "partitions_per_write must be at least 1"),
        ({"grain": ["id; drop"]}, "not a valid identifier"),
        ({"personal_data": {"email": "[a-z"}}, "personal_data 'email' is not a regular expression"),
        ({"personal_data": {"email": Pattern("[a-z", needs="@")}}, "personal_data 'email' is not a regular"),
    ],
)
def test_invalid_specs_name_the_table_and_the_fix(overrides, message):
    with pytest.raises(SpecError, match=message):
        spec(**overrides)
