"""DatabaseExtractor against SQLite (a temp file) and the real PostgreSQL at 127.0.0.1:5432.

PostgreSQL tests are marked `integration`. Under CI=true a PostgreSQL that cannot be reached fails them;
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from jetl.errors import ConfigError, TransientError
from jetl.extractors.database import DatabaseExtractor
from jetl.extractors.incremental import Incremental
from jetl.messages.wire import dumps
from jetl.protocols import Chunk, ExtractContext, Extractor
from jetl.testing.contracts import ExtractorContract

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BASE = datetime(2024, 3, 1, tzinfo=UTC)

_pg_problem: list[str] = []  # memo of the reachability probe: [] untested, [""] reachable, [reason] not


def _require_postgres() -> None:
    if not _pg_problem:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _pg_problem.append("")
        except sa.exc.OperationalError as exc:
            _pg_problem.append(f"PostgreSQL not reachable at {PG_URL}: {str(exc.orig).strip().splitlines()[0]}")
        finally:
            engine.dispose()
    if _pg_problem[0]:
        if os.environ.get("CI") == "true":
            pytest.fail(_pg_problem[0] + " (CI=true: a missing PostgreSQL fails the suite, it is never skipped)")
        pytest.skip(_pg_problem[0])


@dataclass
class Db:
    """A backend under test, with one uniquely named `orders` table of its own."""

    kind: str
    url: str
    engine: sa.Engine
    table: sa.Table

    def insert(self, ids: range) -> None:
        """Rows whose id, amount and updated_at all grow with the id."""
        rows = [
            {
                "id": i,
                "customer": f"c{i % 3}",
                "amount": Decimal(i) * Decimal("1.25"),
                "updated_at": BASE + timedelta(hours=i),
            }
            for i in ids
        ]
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)

    @property
    def name(self) -> str:
        """The table's name."""
        return self.table.name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """An `orders` table on SQLite or PostgreSQL, dropped afterwards."""
    if request.param == "postgresql":
        _require_postgres()
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = sa.create_engine(url)
    table = sa.Table(
        f"jetl_orders_{uuid.uuid4().hex[:10]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer", sa.String(20), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    table.create(engine)
    try:
        yield Db(request.param, url, engine, table)
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()


POSTGRES_ONLY = pytest.mark.parametrize(
    "db", [pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True
)


async def collect(extractor: DatabaseExtractor, ctx: ExtractContext | None = None) -> list[Chunk]:
    """Every chunk of one run, each checked against the chunk bound."""
    chunks = [c async for c in extractor.extract(ctx or ExtractContext(pipeline="orders", run_id="r1"))]
    for chunk in chunks:
        assert 0 < len(chunk.records) <= extractor.chunk_size
        assert chunk.origins is not None and len(chunk.origins) == len(chunk.records)
        dumps(chunk.records)  # what the framework sends on the wire must encode
    return chunks


def ids(chunks: list[Chunk]) -> list[int]:
    """The `id` of every record, in order."""
    return [r["id"] for c in chunks for r in c.records]


def run(number: int, cursor: dict[str, Any] | None = None) -> ExtractContext:
    """A run's context, with the cursor round-tripped through JSON as the framework stores it."""
    stored = None if cursor is None else json.loads(json.dumps(cursor))
    return ExtractContext(pipeline="orders", run_id=f"r{number}", cursor=stored)


# --- table mode -----------------------------------------------------------------------------------


async def test_table_streams_in_bounded_chunks_with_native_values(db: Db) -> None:
    db.insert(range(1, 24))
    extractor = DatabaseExtractor(db.url, table=db.name, chunk_size=5)
    assert isinstance(extractor, Extractor)

    chunks = await collect(extractor)

    assert [len(c.records) for c in chunks] == [5, 5, 5, 5, 3]
    assert sorted(ids(chunks)) == list(range(1, 24))
    assert [c.position for c in chunks][-1] == {"rows": 23}
    first = next(r for c in chunks for r in c.records if r["id"] == 4)
    assert first == {
        "id": 4,
        "customer": "c1",
        "amount": Decimal("5.00"),
        "updated_at": first["updated_at"],
    }
    assert isinstance(first["updated_at"], datetime)
    assert first["updated_at"].replace(tzinfo=UTC) == BASE + timedelta(hours=4)
    origins = [o for c in chunks for o in (c.origins or [])]
    assert f"table {db.name} id=4" in origins
    assert extractor.next_cursor() is None


async def test_table_with_selected_columns(db: Db) -> None:
    db.insert(range(1, 4))
    chunks = await collect(DatabaseExtractor(db.url, table=db.name, columns=["id", "customer"]))
    assert sorted((r["id"], r["customer"]) for c in chunks for r in c.records) == [
        (1, "c1"),
        (2, "c2"),
        (3, "c0"),
    ]
    assert all(set(r) == {"id", "customer"} for c in chunks for r in c.records)


@POSTGRES_ONLY  # schemas
async def test_schema_qualified_table_name(db: Db) -> None:
    db.insert(range(1, 3))
    chunks = await collect(DatabaseExtractor(db.url, table=f"public.{db.name}"))
    assert sorted(ids(chunks)) == [1, 2]
    assert chunks[0].origins is not None and chunks[0].origins[0].startswith(f"table public.{db.name} id=")


async def test_empty_table_yields_nothing(db: Db) -> None:
    assert await collect(DatabaseExtractor(db.url, table=db.name)) == []


async def test_a_large_result_is_streamed_in_bounded_chunks(db: Db) -> None:
    if db.kind == "sqlite":  # no generate_series in a stock SQLite: count with a recursive CTE
        query = "WITH RECURSIVE s(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM s WHERE id < :n) SELECT id FROM s"
    else:
        query = "SELECT g AS id FROM generate_series(1, :n) AS g"
    extractor = DatabaseExtractor(db.url, query=query, params={"n": 20_000}, chunk_size=1_000)
    sizes: list[int] = []
    total = 0
    async for chunk in extractor.extract(ExtractContext(pipeline="big", run_id="r1")):
        sizes.append(len(chunk.records))
        total += sum(r["id"] for r in chunk.records)
    assert max(sizes) == 1_000 and len(sizes) == 20
    assert total == 20_000 * 20_001 // 2


# --- query mode -----------------------------------------------------------------------------------


async def test_query_takes_bound_params_only(db: Db) -> None:
    db.insert(range(1, 13))
    query = f"SELECT id, customer, amount FROM {db.name} WHERE customer = :customer AND id > :min_id ORDER BY id"
    extractor = DatabaseExtractor(db.url, query=query, params={"customer": "c1", "min_id": 3}, chunk_size=2)

    chunks = await collect(extractor)

    assert ids(chunks) == [4, 7, 10]
    assert chunks[0].origins == ["query row 1", "query row 2"]
    assert chunks[-1].origins == ["query row 3"]

    hostile = DatabaseExtractor(db.url, query=query, params={"customer": "x' OR '1'='1", "min_id": 0})
    assert await collect(hostile) == []  # a value is data, never SQL


async def test_query_binds_the_data_interval(db: Db) -> None:
    db.insert(range(1, 49))
    query = (
        f"SELECT id FROM {db.name} "
        "WHERE updated_at >= :data_interval_start AND updated_at < :data_interval_end ORDER BY id"
    )
    extractor = DatabaseExtractor(db.url, query=query)
    ctx = ExtractContext(
        pipeline="orders",
        run_id="d1",
        data_interval_start=BASE + timedelta(hours=10),
        data_interval_end=BASE + timedelta(hours=14),
    )
    assert ids(await collect(extractor, ctx)) == [10, 11, 12, 13]

    with pytest.raises(ConfigError, match=r"data_interval_start.*no data interval"):
        await collect(extractor, ExtractContext(pipeline="orders", run_id="manual"))


async def test_trailing_semicolon_is_accepted(db: Db) -> None:
    db.insert(range(1, 4))
    extractor = DatabaseExtractor(
        db.url, query=f"SELECT id FROM {db.name} ORDER BY id;\n", incremental=Incremental("id", tie_breaker="id")
    )
    assert ids(await collect(extractor)) == [1, 2, 3]


async def test_values_the_encoder_lacks_become_json_friendly(db: Db) -> None:
    query = "SELECT X'00ff' AS raw" if db.kind == "sqlite" else "SELECT '\\x00ff'::bytea AS raw, interval '90s' AS gap"
    chunks = await collect(DatabaseExtractor(db.url, query=query))
    record = chunks[0].records[0]
    assert record["raw"] == "00ff"
    if db.kind == "postgresql":
        assert record["gap"] == 90.0


# --- incremental ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "tag", "last"),
    [
        ("updated_at", "datetime", BASE + timedelta(hours=10)),
        ("id", "int", 10),
        ("amount", "decimal", Decimal("12.50")),
    ],
)
async def test_incremental_table_second_run_reads_only_new_rows(db: Db, column: str, tag: str, last: Any) -> None:
    db.insert(range(1, 11))
    extractor = DatabaseExtractor(db.url, table=db.name, incremental=Incremental(column), chunk_size=4)

    first = await collect(extractor, run(1))
    assert ids(first) == list(range(1, 11))  # ORDER BY the column
    cursor = extractor.next_cursor()
    assert cursor is not None and cursor["column"] == column and cursor["type"] == tag
    stored = json.loads(json.dumps(cursor))  # JSON-serialisable as it is
    if tag == "datetime":
        assert datetime.fromisoformat(stored["value"]).replace(tzinfo=UTC) == last
    else:
        assert stored["value"] == (str(last) if tag == "decimal" else last)
    assert first[-1].position is not None and first[-1].position["high_water"] == cursor["value"]

    db.insert(range(11, 14))
    second = await collect(extractor, run(2, cursor))
    assert ids(second) == [11, 12, 13]
    advanced = extractor.next_cursor()
    assert advanced is not None and advanced != cursor

    third = await collect(extractor, run(3, advanced))
    assert third == []
    assert extractor.next_cursor() == advanced  # nothing new: the mark stays, it never resets


async def test_incremental_query_is_wrapped_as_a_subquery(db: Db) -> None:
    db.insert(range(1, 10))
    query = f"SELECT id, customer, updated_at FROM {db.name} WHERE customer <> :skip"
    extractor = DatabaseExtractor(
        db.url, query=query, params={"skip": "c0"}, incremental=Incremental("updated_at", tie_breaker="id")
    )

    assert ids(await collect(extractor, run(1))) == [1, 2, 4, 5, 7, 8]
    cursor = extractor.next_cursor()
    assert cursor is not None and cursor["column"] == "updated_at"

    db.insert(range(10, 14))
    assert ids(await collect(extractor, run(2, cursor))) == [10, 11, 13]
    assert ids(await collect(extractor, run(3, extractor.next_cursor()))) == []


async def test_incremental_initial_value_bounds_the_first_run(db: Db) -> None:
    db.insert(range(1, 8))
    extractor = DatabaseExtractor(db.url, table=db.name, incremental=Incremental("id", initial=5))
    assert ids(await collect(extractor, run(1))) == [6, 7]


async def test_incremental_run_with_nothing_keeps_the_initial_mark(db: Db) -> None:
    extractor = DatabaseExtractor(db.url, table=db.name, incremental=Incremental("id", initial=5))
    assert await collect(extractor, run(1)) == []
    assert extractor.next_cursor() == {"column": "id", "value": 5, "type": "int"}


async def test_a_cursor_for_another_column_is_refused(db: Db) -> None:
    extractor = DatabaseExtractor(db.url, table=db.name, incremental=Incremental("updated_at"))
    with pytest.raises(ConfigError, match=r"tracks column 'id'.*reset"):
        await collect(extractor, run(2, {"column": "id", "value": 3, "type": "int"}))


# --- errors ---------------------------------------------------------------------------------------


async def test_a_bad_table_name_is_a_clear_config_error(db: Db) -> None:
    extractor = DatabaseExtractor(db.url, table="no_such_orders")
    with pytest.raises(ConfigError, match="table 'no_such_orders': no such table") as info:
        await collect(extractor)
    assert info.value.disposition == "terminal"


async def test_a_bad_column_is_a_clear_config_error(db: Db) -> None:
    extractor = DatabaseExtractor(db.url, table=db.name, incremental=Incremental("changed_at"))
    with pytest.raises(ConfigError, match="no column 'changed_at'; the table has id, customer, amount, updated_at"):
        await collect(extractor)


async def test_a_bad_query_is_terminal_and_names_the_query(db: Db) -> None:
    extractor = DatabaseExtractor(db.url, query="SELECT id FROM   no_such_orders\n WHERE id > :x", params={"x": 1})
    with pytest.raises(ConfigError) as info:
        await collect(extractor)
    message = str(info.value)
    assert "query 'SELECT id FROM no_such_orders WHERE id > :x'" in message
    assert "no_such_orders" in message.split("rejects the statement:")[1]
    assert info.value.disposition == "terminal"


async def test_an_unreachable_database_is_transient() -> None:
    extractor = DatabaseExtractor(
        "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test",
        table="orders",
        engine_options={"connect_args": {"connect_timeout": 2}},
    )
    with pytest.raises(TransientError, match="database unavailable") as info:
        await collect(extractor)
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


async def test_stopping_early_returns_the_connection(db: Db) -> None:
    db.insert(range(1, 30))
    extractor = DatabaseExtractor(db.url, table=db.name, chunk_size=5)
    stream = extractor.extract(ExtractContext(pipeline="orders", run_id="r1"))
    first = await anext(stream)
    assert len(first.records) == 5
    assert extractor.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    await stream.aclose()  # type: ignore[attr-defined]
    assert extractor.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    extractor.dispose()


@POSTGRES_ONLY  # pg_sleep
async def test_the_event_loop_stays_responsive_during_a_slow_query(db: Db) -> None:
    extractor = DatabaseExtractor(db.url, query="SELECT pg_sleep(0.4) AS slept, 1 AS id")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert ids(await collect(extractor)) == [1]
    finally:
        ticker.cancel()
    assert ticks >= 15  # ~40 if the query ran off the loop; 0 if it blocked it


# --- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of table= or query="),
        ({"table": "t", "query": "SELECT 1"}, "exactly one of table= or query="),
        ({"table": "t", "chunk_size": 0}, "chunk_size must be an integer of at least 1"),
        ({"query": "  ;  "}, "query is empty"),
        (
            {"query": "SELECT * FROM t WHERE a = :a AND b = :b", "params": {"a": 1}},
            "no value for bound parameter.*:b",
        ),
        ({"query": "SELECT 1", "params": {"data_interval_start": 1}}, "may not set 'data_interval_start'"),
        ({"query": "SELECT :jetl_high_water"}, "may not use :jetl_high_water"),
        ({"table": "t", "params": {"a": 1}}, "params are for query="),
        ({"query": "SELECT 1", "columns": ["a"]}, "columns= and schema= are for table="),
        (
            {"table": "t", "columns": ["id"], "incremental": Incremental("ts")},
            "columns= must include the incremental column",
        ),
        ({"table": "t", "incremental": Incremental("ts", param="since")}, r"Incremental\(param=...\) is for HTTP"),
        ({"table": "t", "engine_options": {"no_such_option": 1}}, "cannot make an engine"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        DatabaseExtractor(f"sqlite:///{tmp_path / 'x.db'}", **kwargs)


@pytest.mark.parametrize(
    ("url", "message"),
    [("not a url", "is not a SQLAlchemy URL"), ("nosuchdb+nosuchdriver://h/db", "cannot make an engine")],
)
def test_bad_url_or_missing_driver_fails_at_construction(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DatabaseExtractor(url, table="t")


def test_the_password_never_shows() -> None:
    in_url = DatabaseExtractor("postgresql+psycopg://etl:s3cret@db.example/shop", table="orders")
    separate = DatabaseExtractor(
        "postgresql+psycopg://etl@db.example/shop", table="orders", password=SecretStr("s3cret")
    )
    for extractor in (in_url, separate):
        assert "s3cret" not in repr(extractor)
        assert extractor.engine.url.password == "s3cret"
        assert (
            repr(extractor) == "DatabaseExtractor(database postgresql+psycopg://etl:***@db.example/shop table 'orders')"
        )


# --- the Extractor contract suite ---------------------------------------------------------------------------


class TestDatabaseExtractorContract(ExtractorContract):
    """The shared Extractor suite, over a SQLite table read incrementally."""

    max_chunk_size = 4

    @pytest.fixture
    def extractor(self, tmp_path: Path) -> Extractor:
        url = f"sqlite:///{tmp_path / 'contract.db'}"
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, amount NUMERIC)"))
            conn.execute(
                sa.text("INSERT INTO events VALUES (:id, :kind, :amount)"),
                [{"id": i, "kind": f"k{i % 2}", "amount": i * 2.5} for i in range(1, 11)],
            )
        engine.dispose()
        return DatabaseExtractor(url, table="events", incremental=Incremental("id"), chunk_size=4)

    @pytest.fixture
    def expected_records(self) -> int:
        return 10


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://etl:s3cret@db.example:notaport/shop",
        "not a url with s3cret",
    ],
)
def test_a_malformed_url_is_refused_without_echoing_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match="is not a SQLAlchemy URL") as info:
        DatabaseExtractor(url, table="t")
    assert "s3cret" not in str(info.value) and info.value.__cause__ is None


def test_driver_errors_are_shown_without_the_password() -> None:
    extractor = DatabaseExtractor("postgresql+psycopg://etl:s3cret@db.example/shop", table="orders")
    quoted = sa.exc.OperationalError("connect", {}, Exception("cannot reach etl:s3cret@db.example (s3cret)"))
    error = extractor._translate(quoted)
    assert "s3cret" not in str(error) and "database unavailable" in str(error)
