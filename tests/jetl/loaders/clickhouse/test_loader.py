"""ClickHouseLoader on chdb: types from the model, dedup by batch id, merge mode, identifier checks.

chdb opens one folder per process at a time, so this module shares one folder (unique table per test) and closes
the client when done, leaving the process free for another module's folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel, Field

from jetl import ClickHouseLoader, LoadContext, LowCardinality, Timezone
from jetl.errors import ConfigError, TerminalError
from jetl.loaders.clickhouse import close_clients, columns_for
from jetl.messages.ids import batch_id
from jetl.protocols import Check
from jetl.settings import JetlSettings


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    close_clients()  # another module may have left its chdb folder open in this process
    yield f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}"
    close_clients()


@pytest.fixture
def table() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


class Status(StrEnum):
    paid = "paid"
    refunded = "it's refunded"


class Level(Enum):
    low = 1
    high = 2


class Address(BaseModel):
    city: str


class Everything(BaseModel):
    id: int
    name: str
    country: Annotated[str, LowCardinality()]
    region: Annotated[str | None, LowCardinality()] = None
    note: str | None = None
    at: datetime
    at_berlin: Annotated[datetime, Timezone("Europe/Berlin")]
    at_opt: Annotated[datetime, Timezone("Asia/Tokyo", precision=3)] | None = None
    day: date
    price: Decimal = Field(max_digits=10, decimal_places=2)
    ratio: Annotated[Decimal, Field(decimal_places=4)] | None = None
    flag: bool
    uid: UUID
    status: Status
    level: Level
    kind: Literal["a", "b"]
    tags: list[str]
    scores: list[float] | None = None
    attrs: dict[str, int]
    pair: tuple[int, str]
    address: Address
    score: float


EXPECTED = [
    ("id", "Int64"),
    ("name", "String"),
    ("country", "LowCardinality(String)"),
    ("region", "LowCardinality(Nullable(String))"),
    ("note", "Nullable(String)"),
    ("at", "DateTime64(6, 'UTC')"),
    ("at_berlin", "DateTime64(6, 'Europe/Berlin')"),
    ("at_opt", "Nullable(DateTime64(3, 'Asia/Tokyo'))"),
    ("day", "Date32"),
    ("price", "Decimal(10, 2)"),
    ("ratio", "Nullable(Decimal(38, 4))"),
    ("flag", "Bool"),
    ("uid", "UUID"),
    ("status", "Enum8('paid' = 1, 'it\\'s refunded' = 2)"),
    ("level", "Enum8('low' = 1, 'high' = 2)"),
    ("kind", "LowCardinality(String)"),
    ("tags", "Array(String)"),
    ("scores", "Array(Float64)"),
    ("attrs", "Map(String, Int64)"),
    ("pair", "Tuple(Int64, String)"),
    ("address", "String"),
    ("score", "Float64"),
]


def ctx(schema: type[BaseModel], seq: int = 1, run: str = "r1") -> LoadContext:
    return LoadContext(pipeline="ch", run_id=run, batch_id=batch_id(run, seq), schema=schema)


def test_types_from_the_model() -> None:
    assert columns_for(Everything) == EXPECTED


def test_bad_type_options_fail_at_start_up() -> None:
    with pytest.raises(ConfigError, match="unknown time zone"):
        Timezone("Mars/Olympus")

    class TooWide(BaseModel):
        d: Decimal = Field(max_digits=80)

    with pytest.raises(ConfigError, match="out of ClickHouse's range"):
        ClickHouseLoader("t").check_schema(TooWide)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"table": "x; DROP TABLE y"},
        {"table": "ok", "database": "a.b"},
        {"table": "ok", "order_by": ["id`"]},
        {"table": "ok", "mode": "merge"},
        {"table": "ok", "order_by": ["id"], "version_column": "v"},
        {"table": "ok", "partition_by": "toYYYYMM(at)); DROP TABLE x; --"},
    ],
)
def test_bad_identifiers_and_options_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ClickHouseLoader(**kwargs)


def test_check_schema_rejects_unknown_or_nullable_keys() -> None:
    with pytest.raises(ConfigError, match="'nope' is not a field"):
        ClickHouseLoader("t", order_by=["nope"]).check_schema(Everything)
    with pytest.raises(ConfigError, match="may not be optional"):
        ClickHouseLoader("t", order_by=["note"]).check_schema(Everything)
    ClickHouseLoader("t", order_by=["id"], partition_by="toYYYYMM(at)").check_schema(Everything)


def row(i: int, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": i,
        "name": f"n{i}",
        "country": "DE",
        "region": None,
        "note": None if i % 2 else "x",
        "at": datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        "at_berlin": datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        "at_opt": None,
        "day": date(2026, 11, 26),
        "price": Decimal("12.34"),
        "ratio": Decimal("0.1234"),
        "flag": True,
        "uid": UUID(int=i),
        "status": Status.refunded,
        "level": Level.high,
        "kind": "a",
        "tags": ["x", "y"],
        "scores": None,
        "attrs": {"k": i},
        "pair": (i, "p"),
        "address": {"city": "Berlin"},
        "score": 0.5,
    }
    base.update(over)
    return base


def test_round_trip_of_every_type(dsn: str, table: str) -> None:
    loader = ClickHouseLoader(table, dsn=dsn, order_by=["id"])
    loader.check_schema(Everything)
    records = [Everything.model_validate(row(i)).model_dump() for i in (1, 2)]
    assert loader.load(records, ctx(Everything)) == 2
    described = loader.client().query(f"DESCRIBE TABLE {loader.qualified}").result_rows
    # every table records the batch each row came from, and the row's place in the source's log
    lineage = [("_jetl_batch_id", "LowCardinality(String)"), ("_jetl_version", "UInt64"), ("_jetl_deleted", "UInt8")]
    assert [(r[0], r[1]) for r in described] == EXPECTED + lineage
    got = loader.client().query(f"SELECT * FROM {loader.qualified} ORDER BY id").named_results()
    first = next(iter(got))
    assert first["at_berlin"] == datetime(2026, 11, 26, 13, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert first["status"] == "it's refunded" and first["level"] == "high"
    assert first["price"] == Decimal("12.34") and first["uid"] == UUID(int=1)
    assert first["scores"] == [] and first["attrs"] == {"k": 1} and first["pair"] == (1, "p")
    assert first["address"] == '{"city":"Berlin"}'
    assert first["region"] is None and first["note"] is None


def test_time_zones_keep_the_instant_and_naive_is_utc(dsn: str, table: str) -> None:
    class Times(BaseModel):
        id: int
        at: Annotated[datetime, Timezone("Europe/Berlin")]

    loader = ClickHouseLoader(table, dsn=dsn, order_by=["id"])
    instant = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    records = [
        {"id": 1, "at": instant},
        {"id": 2, "at": instant.astimezone(ZoneInfo("America/New_York"))},
        {"id": 3, "at": instant.replace(tzinfo=None)},
    ]
    loader.load(records, ctx(Times))
    rows = (
        loader.client()
        .query(f"SELECT id, toUnixTimestamp64Micro(at), toString(at) FROM {loader.qualified} ORDER BY id")
        .result_rows
    )
    assert {r[1] for r in rows} == {int(instant.timestamp() * 1_000_000)}
    assert rows[0][2] == "2026-06-01 12:00:00.000000"  # shown in Berlin time (CEST)


class Item(BaseModel):
    id: int
    version: int
    name: str


def test_same_batch_id_twice_leaves_one_copy(dsn: str, table: str) -> None:
    loader = ClickHouseLoader(table, dsn=dsn, order_by=["id"])
    records = [{"id": i, "version": 1, "name": "a"} for i in range(5)]
    loader.load(records, ctx(Item, seq=1))
    loader.load(records, ctx(Item, seq=1))  # redelivered
    assert loader.count() == 5
    loader.load(records, ctx(Item, seq=2))  # another batch with the same rows is another insert
    assert loader.count() == 10


def test_merge_mode_keeps_the_highest_version(dsn: str, table: str) -> None:
    loader = ClickHouseLoader(table, dsn=dsn, order_by=["id"], mode="merge", version_column="version")
    loader.check_schema(Item)
    loader.load([{"id": 1, "version": 1, "name": "old"}, {"id": 2, "version": 1, "name": "b"}], ctx(Item, 1))
    loader.load([{"id": 1, "version": 3, "name": "new"}], ctx(Item, 2))
    loader.load([{"id": 1, "version": 2, "name": "stale"}], ctx(Item, 3))
    assert loader.count() == 4
    assert loader.count(final=True) == 2
    rows = loader.client().query(f"SELECT id, version, name FROM {loader.qualified} FINAL ORDER BY id").result_rows
    assert rows == [(1, 3, "new"), (2, 1, "b")]
    assert "ReplacingMergeTree(`version`, `_jetl_deleted`)" in loader.ddl(Item)


def test_value_the_column_cannot_hold_is_terminal(dsn: str, table: str) -> None:
    class WithEnum(BaseModel):
        id: int
        status: Status

    loader = ClickHouseLoader(table, dsn=dsn)
    with pytest.raises(TerminalError, match="cannot convert"):
        loader.load([{"id": 1, "status": "bogus"}], ctx(WithEnum))
    assert loader.count() == 0


def test_database_is_created_and_describe_names_the_table(dsn: str, table: str) -> None:
    loader = ClickHouseLoader(table, dsn=dsn, database="jetl_test")
    loader.load([{"id": 1, "version": 1, "name": "a"}], ctx(Item))
    assert loader.count() == 1
    assert loader.qualified == f"`jetl_test`.`{table}`"
    assert table in loader.describe()


def test_no_dsn_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no DSN"):
        ClickHouseLoader("t").load([{"id": 1, "version": 1, "name": "a"}], ctx(Item))


def test_a_table_from_before_the_dictionary_lineage_column_still_takes_batches(dsn: str, table: str) -> None:
    """Tables made by an earlier version have a String lineage column (new ones LowCardinality(String)): both take
    the dictionary column the loader inserts, through either insert path."""
    from jetl.records import records_adapter

    class Small(BaseModel):
        id: int
        name: str

    loader = ClickHouseLoader(table, dsn=dsn, order_by=["id"])
    loader.client().command(loader.ddl(Small).replace("LowCardinality(String)", "String"))
    rows = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert loader.load(rows[:1], ctx(Small, seq=1)) == 1
    assert loader.load_arrow(records_adapter(Small).arrow_table(rows[1:]), ctx(Small, seq=2)) == 1
    described = dict(loader.client().query(f"DESCRIBE TABLE {loader.qualified}").result_rows[i][:2] for i in range(3))
    assert described["_jetl_batch_id"] == "String"
    got = loader.client().query(f"SELECT id, _jetl_batch_id FROM {loader.qualified} ORDER BY id").result_rows
    assert got == [(1, batch_id("r1", 1)), (2, batch_id("r1", 2))]


def test_check_names_the_table_and_server_without_credentials(tmp_path: Path) -> None:
    loader = ClickHouseLoader("orders", dsn="https://jetl:secret@ch.example.com:8443/analytics")
    assert loader.check(JetlSettings()) == Check("ok", "table orders on https://jetl:***@ch.example.com:8443/analytics")
    assert loader.describe() == "clickhouse:https://jetl:***@ch.example.com:8443/analytics#orders"
    nowhere = tmp_path / "no" / "such" / "place" / "ch"
    assert ClickHouseLoader("orders", dsn=f"chdb://{nowhere}").check(JetlSettings()) == Check(
        "warn", f"chdb folder {nowhere} cannot be created (no parent folder)"
    )


def test_a_server_that_cannot_be_reached_is_named_without_its_password() -> None:
    from jetl.errors import DestinationUnavailable
    from jetl.loaders.clickhouse import get_client
    from jetl.settings import ClickHouseSettings
    from jetl.stack.embedded import free_port

    dsn = f"http://jetl:s3cret@127.0.0.1:{free_port()}/"
    settings = ClickHouseSettings(password="hunter2")  # type: ignore[arg-type]
    with pytest.raises(DestinationUnavailable, match=r"cannot open ClickHouse at http://jetl:\*\*\*@127\.0\.0\.1") as e:
        get_client(dsn, settings)
    assert "s3cret" not in str(e.value) and "hunter2" not in str(e.value) and e.value.__cause__ is None


def test_evolve_adds_widens_and_makes_nullable_once_and_never_narrows(dsn: str, table: str) -> None:
    """`schema_contract="evolve"` on chdb: the table gains a column, widens one to Float64 and one to String, makes
    one Nullable, each evolution a migration numbered from 1000000; the same evolution again changes nothing, and a
    narrower one leaves the wider column as it is. Rows of every model load beside each other."""
    from jetl.evolution import evolved_model
    from jetl.loaders.clickhouse import get_client
    from jetl.migrations import EVOLVE_FROM, Migrator
    from jetl.records import records_adapter

    loader = ClickHouseLoader(table, dsn=dsn, order_by=["id"])
    loader.check_schema(Item)
    loader.load([{"id": 1, "version": 1, "name": "a"}], ctx(Item, seq=1))
    first: dict[str, Any] = {"version": "float", "extra": "bigint"}
    assert len(loader.evolve(Item, first)) == 2
    loader.load([{"id": 2, "version": 1.5, "name": "b", "extra": 7}], ctx(evolved_model(Item, first), seq=2))
    second: dict[str, Any] = {"extra": "text", "name": "nullable", "version": "bigint"}
    assert len(loader.evolve(Item, second)) == 2  # extra widens to String, name made Nullable; version stays Float64
    model = evolved_model(Item, second)
    rows = records_adapter(model).validate_python([{"id": 3, "version": 2, "extra": {"k": 1}}])  # as load_batch does
    loader.load(rows, ctx(model, seq=3))
    twin = ClickHouseLoader(table, dsn=dsn, order_by=["id"])  # another process's loader: it plans, finds nothing
    twin.check_schema(Item)
    assert twin.evolve(Item, first) == [] and twin.evolve(Item, second) == []
    client = get_client(dsn)
    types = dict(client.query(f"SELECT name, type FROM system.columns WHERE table = '{table}'").result_rows)
    assert (types["version"], types["extra"], types["name"]) == (
        "Nullable(Float64)",
        "Nullable(String)",
        "Nullable(String)",
    )
    rows = client.query(f"SELECT id, version, name, extra FROM {table} ORDER BY id").result_rows
    assert [tuple(r) for r in rows] == [(1, 1.0, "a", None), (2, 1.5, "b", "7"), (3, 2.0, None, '{"k":1}')]
    # two processes that planned the same change before either applied it: applied by both, recorded once
    change = (f"evolve_{table}__add_late", [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS late Nullable(String)"])
    assert Migrator(client).evolve(lambda m: change) is not None
    assert Migrator(client).evolve(lambda m: change) is not None
    history = [s for s in Migrator(client).status([]) if s.name.startswith(f"evolve_{table}__")]
    assert [(s.version, s.state) for s in history] == [(EVOLVE_FROM + i, "evolved") for i in range(3)]
