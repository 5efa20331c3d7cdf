"""The evolution lattice (`jetl.evolution`): what drift makes of a model, and what a table must change for it, never
narrowing; and the migrations history an evolution is written to."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from jetl.errors import SchemaFrozen, TerminalError
from jetl.evolution import evolution_of, evolved_model, label, meet, plan
from jetl.migrations import EVOLVE_FROM, Migrator, discover_migrations, evolution
from jetl.records import records_adapter
from jetl.transformers.drift import DriftFinder
from jetl.transformers.shape import model_shape


class Inner(BaseModel):
    zip: int


class Item(BaseModel):
    id: int
    name: str
    qty: int
    price: Decimal = Decimal(0)
    flag: bool = False
    note: str | None = None
    inner: Inner | None = None


def drift(*records: dict[str, object]) -> list[object]:
    finder = DriftFinder(model_shape(Item))
    finder.add(list(records))
    return list(finder.fields())


def test_the_lattice_only_goes_up() -> None:
    assert meet("bigint", "float") == meet("float", "bigint") == "float"
    assert meet("float", "decimal") == "decimal" and meet("decimal", "text") == "text"
    assert meet("bool", "bigint") == "text"  # not ordered: they meet at the top
    assert meet("text", "bigint") == "text"


def test_drift_makes_new_columns_wider_types_and_nullable_fields() -> None:
    fields = drift(
        {"id": 1, "name": "a", "qty": 2.5, "color": "red", "size": 3},
        {"id": 2, "qty": 1, "note": {"k": 1}, "size": 3.5, "price": "1.5"},
    )
    assert evolution_of(Item, fields, ("id",)) == {
        "color": "text",
        "name": "nullable",
        "note": "text",  # a string that receives an object keeps it as JSON text
        "qty": "float",
        "size": "float",  # int and float values of a new field: float
    }
    model = evolved_model(Item, evolution_of(Item, fields, ("id",)))
    assert list(model.model_fields)[:7] == list(Item.model_fields)  # new columns go last
    rows = records_adapter(model).validate_python([{"id": 2, "qty": 1, "note": {"k": 1}, "size": 3, "color": None}])
    assert rows[0] | {} == {
        "id": 2,
        "name": None,
        "qty": 1.0,
        "price": Decimal(0),
        "flag": False,
        "note": '{"k":1}',
        "inner": None,
        "color": None,
        "size": 3.0,
    }
    assert evolved_model(Item, {"qty": "float"}) is evolved_model(Item, {"qty": "float"})
    assert evolved_model(Item, None) is Item


def test_what_evolve_does_not_change_is_held() -> None:
    with pytest.raises(SchemaFrozen, match="nested"):
        evolution_of(Item, drift({"id": 1, "name": "a", "qty": 1, "inner": {"zip": "x"}}))
    with pytest.raises(SchemaFrozen, match="primary key"):
        evolution_of(Item, drift({"id": 1.5, "name": "a", "qty": 1}), ("id",))
    with pytest.raises(SchemaFrozen, match="no column name"):
        evolution_of(Item, drift({"id": 1, "name": "a", "qty": 1, "my field": 5}))
    with pytest.raises(SchemaFrozen, match="widens"):
        evolution_of(Item, drift({"id": 1, "name": "a", "qty": 1, "inner": 5}))


TYPES = {"bigint": "Int64", "float": "Float64", "decimal": "Decimal(38, 9)", "text": "String", "bool": "Bool"}
LATTICE = {v: k for k, v in TYPES.items()}


def test_a_table_only_widens() -> None:
    existing = {"id": ("Int64", False), "qty": ("Int64", False), "name": ("String", False), "at": ("DateTime", False)}
    wanted = {"qty": "Float64", "name": "String", "color": "String", "at": "String"}
    changes = plan({"qty": "float", "name": "nullable", "color": "text"}, existing, wanted, LATTICE.get, TYPES)
    assert changes == [("qty", "widen", "Float64"), ("name", "nullable", "String"), ("color", "add", "String")]
    assert label("items", changes) == "evolve_items__widen_qty__nullable_name__add_color"
    # already wider: a float column that a batch of ints-as-bigint reaches stays float (made nullable only)
    assert plan({"qty": "bigint"}, {"qty": ("String", True)}, {"qty": "Int64"}, LATTICE.get, TYPES) == []
    assert plan({"qty": "nullable"}, {"qty": ("Float64", True)}, {"qty": "Int64"}, LATTICE.get, TYPES) == []
    with pytest.raises(TerminalError, match="write a migration"):
        plan({"at": "text"}, existing, wanted, LATTICE.get, TYPES)


class FakeClient:
    """A ClickHouse client that keeps the statements and the history rows it is given."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.history: list[list[object]] = []

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def insert(self, table: str, rows: list[list[object]], column_names: list[str], settings: object = None) -> None:
        self.history += rows

    def query(self, sql: str, parameters: object = None) -> object:
        class Result:
            result_rows: list[tuple[object, ...]]

        r = Result()
        if "system.tables" in sql:
            r.result_rows = [(1,)]
        else:
            r.result_rows = [(v, n, c, a) for v, n, c, a in self.history]
        return r


def test_evolutions_share_the_history_above_the_files(tmp_path: Path) -> None:
    (tmp_path / "0001_create.sql").write_text("CREATE TABLE t (id Int64) ENGINE = MergeTree ORDER BY id;")
    client = FakeClient()
    migrator = Migrator(client)
    migrator.apply(discover_migrations(tmp_path))
    first = migrator.evolve(lambda m: ("evolve_t__add_color", ["ALTER TABLE t ADD COLUMN IF NOT EXISTS color String"]))
    assert first is not None and first.version == EVOLVE_FROM
    assert migrator.evolve(lambda m: ("evolve_t", [])) is None  # nothing to change: nothing recorded
    second = migrator.evolve(lambda m: ("evolve_t__widen_qty", ["ALTER TABLE t MODIFY COLUMN qty Float64"]))
    assert second is not None and second.version == EVOLVE_FROM + 1
    states = {s.version: s.state for s in migrator.status(discover_migrations(tmp_path))}
    assert states == {1: "applied", EVOLVE_FROM: "evolved", EVOLVE_FROM + 1: "evolved"}
    assert evolution(7, "evolve_t", ["A", "B"]).statements() == ["A", "B"]


def test_accept_checks_held_records_against_the_pipeline_as_it_is_now(tmp_path: Path) -> None:
    """`jetl schema accept` releases nothing that the pipeline would hold again: under freeze, until the model takes
    the drift; under evolve, unless evolve cannot change it."""
    from jetl import Contract, FileExtractor, FileLoader, Pipeline, TypeTransformer
    from jetl.ops.schema import held_refusal

    class Wider(BaseModel):
        id: int
        name: str | None = None
        qty: float
        color: str | None = None

    def pipeline(model: type[BaseModel], contract: str | Contract) -> Pipeline:
        return Pipeline(
            name="items",
            extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
            transformers=[TypeTransformer(model)],
            loader=FileLoader(str(tmp_path / "out")),
            schema=model,
            schema_contract=contract,  # type: ignore[arg-type]
        )

    held = ['{"id": 1, "qty": 2.5, "color": "red"}', {"id": 2, "name": "b", "qty": 1}]
    why = "changed field 'qty'; missing field 'name'; new field 'color'"
    assert held_refusal(pipeline(Item, "freeze"), held) == why
    assert held_refusal(pipeline(Wider, "freeze"), held) is None  # the model was changed to take them
    assert held_refusal(pipeline(Item, "evolve"), held) is None
    assert "nested" in str(held_refusal(pipeline(Item, "evolve"), [{"id": 1, "name": "a", "qty": 1, "inner": {}}]))
    assert held_refusal(pipeline(Item, "discard_row"), held) is None
    # per field: only the fields still under freeze hold the batch again
    only_color = Contract("freeze", {"qty": "discard_value", "name": None})
    assert held_refusal(pipeline(Item, only_color), held) == "new field 'color'"
    assert held_refusal(pipeline(Wider, Contract("freeze", {"qty": "discard_value"})), held) is None
