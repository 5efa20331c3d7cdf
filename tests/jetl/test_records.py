"""The hot path's shortcuts give what the plain path gives: dicts as model_dump(), the model's own errors, origins
back from their compact form, Arrow batches that load the same rows as Python ones.

chdb opens one folder per process at a time, so the ClickHouse tests share one folder (unique table per test) and
close the client when done.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from jetl import ClickHouseLoader, LoadContext, LowCardinality
from jetl.errors import TerminalError
from jetl.loaders.clickhouse import close_clients
from jetl.messages.models import Batch
from jetl.messages.wire import compact_origins, decode_batch, decode_records, encode_batch
from jetl.records import RecordsAdapter, from_ipc, to_ipc


class Color(Enum):
    red = "red"
    blue = "blue"


class Plain(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    x: int = 5
    y: Annotated[float, Field(ge=0)] = Field(default_factory=lambda: 1.0)
    z: str | None = None
    w: str = Field(alias="W")
    kind: Literal["a", "b"] = "a"
    color: Color = Color.red
    price: Decimal = Decimal("1.5")
    at: datetime
    day: date | None = None
    tags: list[str] = []
    ref: UUID | None = None


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int


class Allow(BaseModel):
    model_config = ConfigDict(extra="allow")
    x: int


class Upper(BaseModel):
    x: Annotated[str, AfterValidator(str.upper)]


class Checked(BaseModel):
    x: int

    @field_validator("x")
    @classmethod
    def _positive(cls, v: int) -> int:
        return abs(v)


class Nested(BaseModel):
    inner: Forbid


class Hidden(BaseModel):
    x: int
    secret: int = Field(1, exclude=True)


CASES: list[tuple[type[BaseModel], list[Any]]] = [
    (
        Plain,
        [
            {"W": " hi ", "at": "2026-01-01T00:00:00+02:00"},
            {
                "W": "a",
                "x": "7",
                "y": 2,
                "kind": "b",
                "color": "blue",
                "price": "2.25",
                "at": 1700000000,
                "day": "2026-01-02",
                "tags": ["t"],
                "ref": "12345678123456781234567812345678",
            },
        ],
    ),
    (Plain, [{"W": "x", "at": "bad"}, {"w": "no alias", "at": "2026-01-01"}, {"W": "a", "y": -1, "at": "2026-01-01"}]),
    (Plain, [Plain(W="instance", at=datetime(2026, 1, 1, tzinfo=UTC))]),
    (Forbid, [{"x": 1}, {"x": 1, "y": 2}]),
    (Allow, [{"x": 1, "y": 2}]),
    (Upper, [{"x": "a"}]),
    (Checked, [{"x": -1}]),
    (Nested, [{"inner": {"x": 1}}]),
    (Hidden, [{"x": 1}]),
]


@pytest.mark.parametrize(("model", "records"), CASES)
def test_records_adapter_is_model_dump_with_the_models_errors(model: type[BaseModel], records: list[Any]) -> None:
    plain = TypeAdapter(list[model])  # type: ignore[valid-type]
    fast = RecordsAdapter(model)
    try:
        want: Any = [m.model_dump() for m in plain.validate_python(records)]
    except ValidationError as exc:
        want = exc.errors(include_url=False)
    try:
        got: Any = fast.validate_python(records)
    except ValidationError as exc:
        got = exc.errors(include_url=False)
    assert got == want
    if isinstance(want, list) and want and isinstance(want[0], dict) and "type" not in want[0]:
        assert [list(r) for r in got] == [list(r) for r in want]  # same keys in the same order


def test_the_shortcut_is_taken_only_where_it_is_exact() -> None:
    assert RecordsAdapter(Plain).fast and RecordsAdapter(Forbid).fast
    for model in (Allow, Upper, Checked, Nested, Hidden):
        assert not RecordsAdapter(model).fast, model


def test_origins_travel_as_runs_and_come_back() -> None:
    origins = [f"/data/in.jsonl:{n}" for n in range(1, 5001) if n % 733]
    runs = compact_origins(origins)
    assert runs is not None and len(runs) == 7 and runs[0] == ("/data/in.jsonl:", 1, 732)
    b = Batch(pipeline="p", run_id="r", seq=0, schema_name="S", schema_hash="h", count=len(origins), origins=origins)
    head, _ = decode_batch(encode_batch(b, b"[]"))
    assert head.origins is None and head.origin_runs == runs
    assert [head.origin(i) for i in range(len(origins))] == origins
    assert head.origin(len(origins)) is None and head.origin(-1) is None
    assert compact_origins(["a:01", "a:02"]) == [("a:0", 1, 2)]  # a leading zero stays in the prefix
    assert compact_origins(["page 3 #a", "page 3 #b"]) is None
    assert compact_origins([f"x:{n}" for n in range(0, 40, 2)]) is None  # no runs: they travel as they are


class Row(BaseModel):
    id: int
    at: datetime
    name: str
    note: Annotated[str | None, LowCardinality()] = None
    amount: float
    ok: bool
    day: date


def _rows() -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "at": datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
            "name": "a",
            "note": None,
            "amount": 1.5,
            "ok": True,
            "day": date(2026, 1, 1),
        },
        {
            "id": 2,
            "at": datetime(2026, 1, 1, 12),
            "name": "é",
            "note": "n",
            "amount": 2,
            "ok": False,
            "day": date(2026, 1, 2),
        },
    ]


def test_arrow_batches_validate_column_by_column_and_check_on_arrival() -> None:
    adapter = RecordsAdapter(Row)
    assert adapter.arrow_schema is not None and RecordsAdapter(Plain).arrow_schema is None
    table = from_ipc(to_ipc(adapter.arrow_table(_rows())))
    adapter.check_arrow(table)
    assert table.column("amount").to_pylist() == [1.5, 2.0]
    assert table.column("at").to_pylist()[0] == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert decode_records(to_ipc(table), "arrow")[1]["name"] == "é"
    for bad in ({"name": 3}, {"id": "x"}, {"at": None}):
        with pytest.raises((ValueError, TypeError)):
            adapter.arrow_table([{**_rows()[0], **bad}])
    with pytest.raises(KeyError):
        adapter.arrow_table([{k: v for k, v in _rows()[0].items() if k != "day"}])
    with pytest.raises(TerminalError):
        adapter.check_arrow(table.drop_columns(["day"]))
    with pytest.raises(TerminalError):
        adapter.check_arrow(table.set_column(0, "id", table.column("id").cast("float64")))


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    close_clients()
    yield f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}"
    close_clients()


def test_arrow_and_python_inserts_load_the_same_rows(dsn: str) -> None:
    tables = {}
    for how in ("records", "arrow table", "python columns"):
        name = f"t_{uuid.uuid4().hex[:12]}"
        loader = ClickHouseLoader(name, order_by=["id"])
        loader.open(dsn)
        loader.check_schema(Row)
        ctx = LoadContext(pipeline="p", run_id="r", batch_id="r/000001", schema=Row)
        for _ in range(2):  # the second write of the same batch id is dropped
            if how == "arrow table":
                loader.load_arrow(RecordsAdapter(Row).arrow_table(_rows()), ctx)
            else:
                if how == "python columns":
                    loader._arrow_types[Row] = None
                loader.load(_rows(), ctx)
        tables[how] = loader.client().query(f"SELECT * FROM {name} ORDER BY id").result_rows
    assert tables["records"] == tables["arrow table"] == tables["python columns"]
    assert len(tables["records"]) == 2 and "r/000001" in tables["records"][0]  # the lineage column, by value


def test_compiled_column_transformer_matches_the_generic_loop() -> None:
    import random

    from jetl import ColumnTransformer
    from jetl.errors import RecordError

    def run(t: ColumnTransformer, records: list[dict[str, Any]]) -> Any:
        try:
            out = t.transform([dict(r) for r in records])
            return "ok", [list(r.items()) for r in out]
        except RecordError as exc:
            return "err", [(i.index, i.field, i.message, i.record) for i in exc.issues], exc.survivors

    keys = ["a", "b", "c", "d", "e"]
    rnd = random.Random(7)
    for _ in range(500):
        rename = {k: rnd.choice([*keys, "x", "y"]) for k in rnd.sample(keys, rnd.randint(0, 3))}
        select = rnd.sample([*keys, "x", "y", "z"], rnd.randint(1, 4)) if rnd.random() < 0.3 else None
        t = ColumnTransformer(
            rename={k: v for k, v in rename.items() if k != v},
            defaults={k: rnd.randint(0, 9) for k in rnd.sample([*keys, "x"], rnd.randint(0, 2))},
            add={k: "c" for k in rnd.sample([*keys, "y"], rnd.randint(0, 2))},
            compute={k: (lambda r, src=rnd.choice(keys): r[src]) for k in rnd.sample([*keys, "z"], rnd.randint(0, 2))},
            select=select,
            drop=[k for k in rnd.sample(keys, rnd.randint(0, 2)) if not select or k not in select],
        )
        assert t._compiled is not None
        records = [
            {k: rnd.choice([None, 1, "s"]) for k in rnd.sample([*keys, "x", "y"], rnd.randint(0, 6))} for _ in range(5)
        ]
        compiled = run(t, records)
        in_place = t.transform_in_place([dict(r) for r in records])  # the same, or None where a record fails
        assert (["ok", [list(r.items()) for r in in_place]] if in_place is not None else "err") == (
            list(compiled) if compiled[0] == "ok" else "err"
        )
        t._compiled = None
        assert compiled == run(t, records)


def test_json_texts_travel_unparsed_and_read_back_with_what_is_not_a_record() -> None:
    """encode_records joins JSON texts as they are; read_records reads them in one call when they are all records,
    else text by text; dead_records keeps every element of such a batch, the unreadable ones as they were."""
    from jetl.errors import TerminalError
    from jetl.messages.deadletter import dead_records
    from jetl.messages.wire import encode_records, read_records

    texts = [b'{"a": 1}\n', b'{"a": 2}\r\n', b'{"a": 3}']
    body = encode_records([*texts, {"a": 4}])
    assert read_records(body, 4) == ([{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}], None, [])
    assert encode_records([{"a": 1}]) == b'[{"a":1}]'  # records alone: one orjson call, as before

    bad = encode_records([b'{"a": 1}\n', b'{"a": "x\\n,"}\n', b"{oops\n", b'"s"\n', b'{"a": 5}'])
    records, positions, unread = read_records(bad, 5)
    assert records == [{"a": 1}, {"a": "x\n,"}, {"a": 5}] and positions == [0, 1, 4]
    assert [(u.position, u.value) for u in unread] == [(2, "{oops"), (3, "s")]
    assert "malformed JSON" in unread[0].reason and unread[1].reason == "expected a JSON object, got str"
    with pytest.raises(TerminalError, match="does not read as 6 JSON records"):
        read_records(bad, 6)
    assert [(r["index"], r["record"], r["message"] is None) for r in dead_records(bad)] == [
        (0, {"a": 1}, True),
        (1, {"a": "x\n,"}, True),
        (2, "{oops", False),
        (3, "s", False),
        (4, {"a": 5}, True),
    ]
    assert dead_records(b"garbage")[0]["record"] == "garbage"  # nothing is lost


def test_fields_validated_upstream_under_the_same_type_are_not_validated_again() -> None:
    """output_types follows validated fields through the chain; the schema's fields whose type (core schema and
    config) they already passed are trusted by the Arrow build, and nothing else is."""
    from jetl import (
        ColumnTransformer,
        ConsoleLoader,
        FileExtractor,
        FilterTransformer,
        LambdaTransformer,
        Pipeline,
    )
    from jetl import TypeTransformer as TT

    class In(BaseModel):
        id: int
        name: str
        at: datetime
        amount: float
        extra: str

    class Out(BaseModel):
        id: int
        title: str
        at: datetime
        amount: float
        cents: int

    class Lower(BaseModel):
        model_config = ConfigDict(str_to_lower=True)
        id: int
        title: str

    def pipeline(*transformers: Any, schema: type[BaseModel] = Out) -> Pipeline:
        return Pipeline(
            name="p",
            extractors=[FileExtractor("x.jsonl")],
            loader=ConsoleLoader(),
            schema=schema,
            transformers=list(transformers),
        )

    cols = ColumnTransformer(rename={"name": "title"}, compute={"cents": lambda r: 1}, drop=["extra"])
    assert pipeline(TT(In), cols).trusted_fields == {"id", "title", "at", "amount"}  # cents is computed
    assert pipeline(TT(In), FilterTransformer(lambda r: True), cols).trusted_fields == {"id", "title", "at", "amount"}
    assert pipeline(TT(In), LambdaTransformer(lambda r: r), cols).trusted_fields == frozenset()  # opaque step
    overwrite = ColumnTransformer(rename={"name": "title"}, compute={"cents": lambda r: 1, "amount": lambda r: 1})
    assert pipeline(TT(In), overwrite).trusted_fields == {"id", "title", "at"}
    swap = ColumnTransformer(rename={"name": "title", "title": "name"}, compute={"cents": lambda r: 1})
    assert pipeline(TT(In), swap).trusted_fields == frozenset()  # renames into each other: not followed
    assert pipeline(TT(In), cols, schema=Lower).trusted_fields == frozenset()  # another config: none
    assert pipeline(TT(Lower), ColumnTransformer(select=["id", "title"]), schema=Lower).trusted_fields == {
        "id",
        "title",
    }

    # trusting changes nothing in what comes out
    adapter = RecordsAdapter(Out)
    rows = [{"id": 1, "title": "a", "at": datetime(2026, 1, 1, tzinfo=UTC), "amount": 1.5, "cents": 150}]
    trusted = adapter.arrow_table(rows, trusted=frozenset({"id", "title", "at", "amount"}))
    assert trusted.equals(adapter.arrow_table(rows))
    with pytest.raises(ValueError, match="valid integer"):  # the untrusted column is still validated
        adapter.arrow_table([{**rows[0], "cents": "x"}], trusted=frozenset({"id", "title", "at", "amount"}))
