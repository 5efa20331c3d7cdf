"""Transformers: lambda, type, column, filter, dedupe; record-level rejection; the start-up output-fields check."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from jetl import (
    ArrowExpression,
    ColumnTransformer,
    ConsoleLoader,
    DedupeTransformer,
    ExtractContext,
    FilterTransformer,
    LambdaTransformer,
    Pipeline,
    TypeTransformer,
)
from jetl.errors import ConfigError, RecordError
from jetl.protocols import Check, Chunk, Record, Transformer


def run(transformers: list[Any], records: list[Record]) -> tuple[list[Record], list[str]]:
    """Apply transformers in order the way the transformer stage does: rejects drop out, survivors go on."""
    reasons: list[str] = []
    for t in transformers:
        try:
            records = t.transform(records)
        except RecordError as exc:
            reasons += [f"{i.field}: {i.message}" for i in exc.issues]
            records = list(exc.survivors or [])
    return records, reasons


class Raw(BaseModel):
    id: int
    name: str
    day: date


class Out(BaseModel):
    id: int
    label: str
    day: date
    source: str


# -- lambda, type, column (existing behaviour) --------------------------------------------------------------


def test_lambda_filters_fans_out_and_rejects_one_record() -> None:
    def fn(r: Record) -> Any:
        if r["n"] == 0:
            return None
        if r["n"] == 2:
            return [r, r]
        if r["n"] == 3:
            raise ValueError("three")
        return r

    t = LambdaTransformer(fn)
    with pytest.raises(RecordError) as info:
        t.transform([{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}])
    assert info.value.survivors == [{"n": 1}, {"n": 2}, {"n": 2}]
    assert [i.index for i in info.value.issues] == [3]
    assert "ValueError: three" in info.value.issues[0].message


def test_lambda_async_function() -> None:
    async def double(r: Record) -> Record:
        return {"n": r["n"] * 2}

    assert LambdaTransformer(double).transform([{"n": 1}, {"n": 2}]) == [{"n": 2}, {"n": 4}]


def test_type_transformer_rejects_bad_records_and_types_the_rest() -> None:
    t = TypeTransformer(Raw)
    with pytest.raises(RecordError) as info:
        t.transform([{"id": "1", "name": "a", "day": "2026-11-26"}, {"id": "x", "name": "b", "day": "2026-11-26"}])
    assert info.value.survivors == [{"id": 1, "name": "a", "day": date(2026, 11, 26)}]
    assert info.value.issues[0].index == 1 and info.value.issues[0].field == "id"
    # a transformer does not know its pipeline: its error says what it knows, never `pipeline ''`
    assert str(info.value).startswith("record 1: field 'id': ")


def test_column_transformer_steps_and_compute_rejection() -> None:
    t = ColumnTransformer(
        flatten=True,
        rename={"a_b": "ab"},
        defaults={"d": 0},
        add={"k": "const"},
        compute={"twice": lambda r: r["ab"] * 2},
        drop=["x"],
    )
    assert t.transform([{"a": {"b": 2}, "x": 1}]) == [{"ab": 2, "d": 0, "k": "const", "twice": 4}]
    with pytest.raises(RecordError) as info:
        t.transform([{"a": {"b": 1}}, {"a": {}}])
    assert info.value.survivors == [{"ab": 1, "d": 0, "k": "const", "twice": 2}]
    assert info.value.issues[0].index == 1 and info.value.issues[0].field == "twice"


# -- filter --------------------------------------------------------------------------------------------------


def test_filter_keeps_matching_records_in_order() -> None:
    t = FilterTransformer(lambda r: r["n"] % 2 == 0)
    assert t.transform([{"n": i} for i in range(6)]) == [{"n": 0}, {"n": 2}, {"n": 4}]
    assert isinstance(t, Transformer)


def test_filter_predicate_error_rejects_only_that_record() -> None:
    t = FilterTransformer(lambda r: r["n"] > 1, name="big")
    with pytest.raises(RecordError) as info:
        t.transform([{"n": 5}, {}, {"n": 0}, {"n": 3}])
    assert info.value.survivors == [{"n": 5}, {"n": 3}]
    assert [i.index for i in info.value.issues] == [1]
    assert "big raised KeyError" in info.value.issues[0].message


def test_filter_needs_a_callable() -> None:
    with pytest.raises(ConfigError):
        FilterTransformer("n > 1")  # type: ignore[arg-type]


# -- dedupe --------------------------------------------------------------------------------------------------

DUPES = [
    {"id": 1, "v": "a"},
    {"id": 2, "v": "b"},
    {"id": 1, "v": "c"},
    {"id": 3, "v": "d"},
    {"id": 2, "v": "e"},
]


def test_dedupe_keep_first() -> None:
    out = DedupeTransformer(key=["id"]).transform(DUPES)
    assert out == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "d"}]


def test_dedupe_keep_last_keeps_order_of_last_occurrence() -> None:
    out = DedupeTransformer(key=["id"], keep="last").transform(DUPES)
    assert out == [{"id": 1, "v": "c"}, {"id": 3, "v": "d"}, {"id": 2, "v": "e"}]


def test_dedupe_compound_and_unhashable_keys() -> None:
    rows = [{"a": 1, "tags": ["x"]}, {"a": 1, "tags": ["y"]}, {"a": 1, "tags": ["x"]}, {"a": 2, "tags": ["x"]}]
    out = DedupeTransformer(key=["a", "tags"]).transform(rows)
    assert out == [rows[0], rows[1], rows[3]]


def test_dedupe_rejects_records_missing_the_key() -> None:
    with pytest.raises(RecordError) as info:
        DedupeTransformer(key=["id"]).transform([{"id": 1}, {"v": 2}, {"id": 1}])
    assert info.value.survivors == [{"id": 1}]
    assert info.value.issues[0].index == 1 and info.value.issues[0].field == "id"


@pytest.mark.parametrize("kwargs", [{"key": []}, {"key": ["id"], "keep": "middle"}])
def test_dedupe_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DedupeTransformer(**kwargs)


# -- composition ---------------------------------------------------------------------------------------------


def test_transformers_compose_in_order_with_rejects_dropping_out() -> None:
    chain = [
        TypeTransformer(Raw),
        FilterTransformer(lambda r: r["name"] != "test"),
        DedupeTransformer(key=["id"], keep="last"),
        ColumnTransformer(rename={"name": "label"}, add={"source": "crm"}),
    ]
    raw = [
        {"id": 1, "name": "a", "day": "2026-11-26"},
        {"id": "bad", "name": "b", "day": "2026-11-26"},
        {"id": 2, "name": "test", "day": "2026-11-26"},
        {"id": 1, "name": "a2", "day": "2026-11-27"},
    ]
    out, reasons = run(chain, raw)
    assert out == [{"id": 1, "label": "a2", "day": date(2026, 11, 27), "source": "crm"}]
    assert len(reasons) == 1 and reasons[0].startswith("id:")
    # the order matters: deduping (keep first) before filtering loses id 2 altogether
    raw2 = [*raw[:3], {"id": 2, "name": "c", "day": "2026-11-26"}]
    first = DedupeTransformer(key=["id"])
    filter_then_dedupe, _ = run([chain[0], chain[1], first, chain[3]], raw2)
    dedupe_then_filter, _ = run([chain[0], first, chain[1], chain[3]], raw2)
    assert [r["label"] for r in filter_then_dedupe] == ["a", "c"]
    assert [r["label"] for r in dedupe_then_filter] == ["a"]


# -- output fields and the start-up check ---------------------------------------------------------------------


def test_column_output_fields() -> None:
    fields = frozenset({"id", "name", "day"})
    t = ColumnTransformer(rename={"name": "label"}, add={"source": "x"}, compute={"n": len}, drop=["day"])
    assert t.output_fields(fields) == {"id", "label", "source", "n"}
    assert t.output_fields(None) is None
    assert ColumnTransformer(select=["a", "b"], drop=[]).output_fields(None) == {"a", "b"}
    assert ColumnTransformer(flatten=True).output_fields(fields) is None
    assert ColumnTransformer(defaults={"z": 1}).output_fields(fields) == fields | {"z"}


def test_type_output_fields_and_schema() -> None:
    class Aliased(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        user_id: int = Field(alias="userId")

    assert TypeTransformer(Raw).output_schema() is Raw
    assert TypeTransformer(Raw).output_fields(None) == {"id", "name", "day"}
    assert TypeTransformer(Aliased, by_alias=True).output_fields(None) == {"userId"}


class _Ex:
    async def extract(self, ctx: ExtractContext) -> Any:
        yield Chunk([])

    def next_cursor(self) -> dict[str, Any] | None:
        return None

    def check(self, settings: Any) -> Check:
        return Check("ok", "configured")


def make(transformers: list[Any], schema: type[BaseModel] = Out) -> Pipeline:
    return Pipeline(
        name="check_me", extractors=[_Ex()], loader=ConsoleLoader(), schema=schema, transformers=transformers
    )


def test_pipeline_start_up_names_missing_fields() -> None:
    with pytest.raises(ConfigError) as info:
        make([TypeTransformer(Raw), ColumnTransformer(rename={"name": "label"})])
    assert "'check_me'" in str(info.value) and "['source']" in str(info.value)
    with pytest.raises(ConfigError, match=r"\['label', 'source'\]"):
        make([TypeTransformer(Raw), FilterTransformer(bool), DedupeTransformer(["id"])])


def test_pipeline_start_up_passes_when_fields_are_covered_or_unknowable() -> None:
    make([TypeTransformer(Raw), ColumnTransformer(rename={"name": "label"}, add={"source": "x"})])
    make([TypeTransformer(Raw), LambdaTransformer(lambda r: r)])  # opaque: cannot be checked
    make([])  # no transformers: the extractor's output is unknown

    class WithDefault(BaseModel):
        id: int
        source: str = "none"

    make([TypeTransformer(Raw)], schema=WithDefault)  # `source` is optional


def test_pipeline_check_honours_aliases() -> None:
    class ByAlias(BaseModel):
        user_id: int = Field(alias="userId")

    make([ColumnTransformer(select=["userId"])], schema=ByAlias)
    with pytest.raises(ConfigError, match="user_id"):
        make([ColumnTransformer(select=["user_id"])], schema=ByAlias)


def test_a_computed_column_as_an_arrow_expression_is_the_same_on_dicts_and_on_a_table() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    total = pc.multiply(pc.field("price"), pc.field("qty"))
    t = ColumnTransformer(rename={"n": "qty"}, compute={"total": total}, drop=["price"])
    rows = [{"price": 2.5, "n": 4, "sku": "a"}, {"price": 1.0, "n": 3, "sku": "b"}]
    expected = [{"qty": 4, "sku": "a", "total": 10.0}, {"qty": 3, "sku": "b", "total": 3.0}]
    assert t.transform([dict(r) for r in rows]) == expected  # the dropped column was read first
    assert t.transform_in_place([dict(r) for r in rows]) == expected
    assert t.takes_arrow
    table = t.transform_arrow(pa.Table.from_pylist(rows))
    assert sorted(table.to_pylist(), key=lambda r: r["sku"]) == expected


def test_a_row_an_expression_cannot_compute_is_rejected_alone_and_functions_keep_the_dicts_way() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    cents = pc.multiply(pc.field("amount"), 100).cast(pa.int64())  # a fraction of a cent: refused, not truncated
    t = ColumnTransformer(compute={"cents": cents, "tag": lambda r: "x"})
    with pytest.raises(RecordError) as err:
        t.transform([{"amount": 1.5}, {"amount": 0.001}, {"amount": 2.0}])
    assert [(i.index, i.field) for i in err.value.issues] == [(1, "cents")]
    assert err.value.survivors == [{"amount": 1.5, "tag": "x", "cents": 150}, {"amount": 2.0, "tag": "x", "cents": 200}]
    assert not t.takes_arrow and t.transform_arrow(pa.table({"amount": [1.0]})) is None
    with pytest.raises(ConfigError, match="neither callable nor a pyarrow expression"):
        ColumnTransformer(compute={"x": 3})


def test_an_arrow_expression_built_on_first_use_is_the_same_and_a_wrong_one_says_so() -> None:
    import pyarrow as pa

    lazy = ArrowExpression(lambda pc, pa: pc.multiply(pc.field("price"), pc.field("qty")))
    t = ColumnTransformer(compute={"total": lazy})
    assert t.takes_arrow and repr(lazy) == "ArrowExpression()"
    assert t.transform([{"price": 2.0, "qty": 3}]) == [{"price": 2.0, "qty": 3, "total": 6.0}]
    assert t.transform_arrow(pa.table({"price": [2.0], "qty": [3]})).column("total").to_pylist() == [6.0]
    wrong = ColumnTransformer(compute={"total": ArrowExpression(lambda pc, pa: 3)})
    with pytest.raises(RecordError) as err:  # evaluated per record, each says why
        wrong.transform([{"price": 1.0}])
    assert "not a pyarrow expression" in err.value.issues[0].describe("p")
