"""Drift of raw records from a pipeline's input model, and the contracts' work on a batch, without services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from jetl import ConfigError, Contract, FileExtractor, FileLoader, LambdaTransformer, Pipeline, TypeTransformer
from jetl.messages.wire import encode_records, read_records
from jetl.transformers.drift import DriftFinder, apply_contract, batch_drift
from jetl.transformers.shape import model_shape


class Address(BaseModel):
    city: str
    zip: int


class Customer(BaseModel):
    id: int
    price: float
    address: Address
    tags: list[str] = []


def pipeline(tmp_path: Path, contract: str | Contract | None = None) -> Pipeline:
    return Pipeline(
        name="c",
        extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
        transformers=[TypeTransformer(Customer)],
        loader=FileLoader(str(tmp_path / "out")),
        schema=Customer,
        schema_contract=contract,  # type: ignore[arg-type]
    )


def test_nested_fields_are_named_by_path_and_an_int_is_a_float() -> None:
    finder = DriftFinder(model_shape(Customer))
    finder.add([{"id": 1, "price": 3, "address": {"city": "x", "zip": "01234", "floor": 2}, "tags": "a"}])
    got = {(f.kind, f.path, f.expected, f.seen, f.example) for f in finder.fields()}
    assert got == {
        ("changed", "address.zip", "int", "str", '"01234"'),
        ("new", "address.floor", "", "int", "2"),
        ("changed", "tags", "list[str]", "str", '"a"'),
    }


def test_a_bool_field_takes_true_and_false_and_no_number() -> None:
    """bool is an int subclass in Python: its field once took JSON numbers only, so every true/false drifted (and a
    frozen pipeline held every batch of a model with a bool field)."""

    class Flagged(BaseModel):
        id: int
        deleted: bool = False

    finder = DriftFinder(model_shape(Flagged))
    finder.add([{"id": 1, "deleted": False}, {"id": 2, "deleted": True}])
    assert finder.fields() == []
    finder.add([{"id": 3, "deleted": 1}])
    assert [(f.kind, f.path, f.seen) for f in finder.fields()] == [("changed", "deleted", "int")]


def test_a_clean_batch_is_sampled_at_its_ends(tmp_path: Path) -> None:
    texts = [orjson.dumps({"id": i, "price": 1.0, "address": {"city": "x", "zip": 1}}) for i in range(5)]
    texts[2] = orjson.dumps({"id": 2, "price": 1.0, "address": {"city": "x", "zip": 1}, "extra": 1})
    body = encode_records(texts)
    assert batch_drift(pipeline(tmp_path), body, 5, whole=False) == ([], 2)  # the middle one is not looked at
    fields, looked = batch_drift(pipeline(tmp_path), body, 5, whole=True)
    assert looked == 5 and [(f.kind, f.path, f.count) for f in fields] == [("new", "extra", 1)]


def test_discard_row_keeps_unreadable_lines_and_says_where_records_were(tmp_path: Path) -> None:
    good = orjson.dumps({"id": 1, "price": 1.0, "address": {"city": "x", "zip": 1}})
    bad = orjson.dumps({"id": 2, "price": "free", "address": {"city": "x", "zip": 1}})
    body = encode_records([bad, b'{"id": ', good])
    out = apply_contract(pipeline(tmp_path, "discard_row"), body, 3)
    assert (out.count, out.kept, out.discarded_rows) == (2, [1, 2], 1)
    records, positions, unread = read_records(out.body, 2)
    assert records == [orjson.loads(good)] and positions == [1] and unread[0].position == 0


def test_contracts_are_checked_at_start_up(tmp_path: Path) -> None:
    assert pipeline(tmp_path, "evolve").schema_contract == "evolve"
    with pytest.raises(ConfigError, match="'evolve' evolves the schema"):
        Pipeline(
            name="c",
            extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
            transformers=[TypeTransformer(Customer), TypeTransformer(Customer)],
            loader=FileLoader(str(tmp_path / "out")),
            schema=Customer,
            schema_contract="evolve",
        )

    class Fixed:  # a loader whose destination cannot evolve (as Iceberg's, for now)
        def load(self, records: list[Any], ctx: Any) -> int:
            return len(records)

        def describe(self) -> str:
            return "fixed"

        def check(self, settings: Any) -> Any:
            return None

    with pytest.raises(ConfigError, match="cannot evolve its destination"):
        Pipeline(
            name="c",
            extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
            loader=Fixed(),
            schema=Customer,
            schema_contract="evolve",
        )
    with pytest.raises(ConfigError, match="must be one of"):
        pipeline(tmp_path, "loose")
    with pytest.raises(ConfigError, match="leading TypeTransformer"):
        Pipeline(
            name="c",
            extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
            transformers=[LambdaTransformer(lambda r: r), TypeTransformer(Customer)],
            loader=FileLoader(str(tmp_path / "out")),
            schema=Customer,
            schema_contract="freeze",
        )


def test_a_field_mode_covers_its_nested_fields_and_new_fields_take_the_default() -> None:
    c = Contract("freeze", {"address": "discard_row", "tags": None})
    assert [c.mode_of(p) for p in ("address.zip", "address.floor", "tags", "price", "color")] == [
        "discard_row",
        "discard_row",
        None,
        "freeze",
        "freeze",
    ]


def test_per_field_modes_act_on_their_own_fields(tmp_path: Path) -> None:
    ok = {"id": 1, "price": 1.0, "address": {"city": "x", "zip": 1}}
    moved = {"id": 2, "price": 1.0, "address": {"city": "x", "zip": "01234"}}  # a nested field mistyped
    tagged = {"id": 3, "price": 1.0, "address": {"city": "x", "zip": 1}, "tags": "a"}  # a list field given a string
    body = encode_records([orjson.dumps(r) for r in (ok, moved, tagged)])

    out = apply_contract(
        pipeline(tmp_path, Contract("freeze", {"address": "discard_row", "tags": "discard_value"})), body, 3
    )
    assert not out.frozen and (out.discarded_rows, out.discarded_values, out.kept) == (1, 1, [0, 2])
    assert read_records(out.body, 2)[0] == [ok, {k: v for k, v in tagged.items() if k != "tags"}]

    # the same drift under a freeze of `tags` holds the batch, naming only the frozen field
    held = apply_contract(pipeline(tmp_path, Contract("discard_row", {"tags": "freeze"})), body, 3)
    assert held.frozen and held.body == body and held.discarded_rows == 0
    assert "'tags'" in held.describe() and "address" not in held.describe()
    assert {f.path for f in held.fields} == {"address.zip", "tags"}  # the event still says all that drifted

    # a field left to the model (None): reported, nothing discarded, the batch goes on as it came
    told = apply_contract(pipeline(tmp_path, Contract(None, {"tags": "discard_value"})), body, 3)
    assert (told.discarded_rows, told.discarded_values, told.kept) == (0, 1, [0, 1, 2])
    assert read_records(told.body, 3)[0][1] == moved  # its drift left to the model, which dead-letters it
    reported = apply_contract(pipeline(tmp_path, Contract("discard_value", {"address": None, "tags": None})), body, 3)
    assert reported.body == body and reported.kept is None and len(reported.fields) == 2


def test_per_field_contracts_are_checked_at_start_up(tmp_path: Path) -> None:
    assert pipeline(tmp_path, Contract("freeze")).schema_contract == "freeze"  # no fields: the pipeline's mode
    with pytest.raises(
        ConfigError,
        match=r"pipeline 'c': schema_contract names field 'adress\.zip', which its input model Customer does not have",
    ):
        pipeline(tmp_path, Contract("freeze", {"adress.zip": "discard_value"}))
    assert pipeline(tmp_path, Contract("freeze", {"address.zip": "discard_value"})).contract is not None
    with pytest.raises(ConfigError, match=r"must be one of .* got 'drop'"):
        pipeline(tmp_path, Contract("freeze", {"tags": "drop"}))  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="'evolve' is the whole pipeline's contract"):
        pipeline(tmp_path, Contract("evolve", {"tags": "discard_value"}))
