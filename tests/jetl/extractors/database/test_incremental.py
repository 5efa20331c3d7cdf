"""DatabaseExtractor's incremental cursor over many runs, against real sources: SQLite text with a "T", SQLite
datetime columns, PostgreSQL timestamptz. Each scenario drives the extractor as the extractor service does: every
run starts from the cursor the previous run left, round-tripped through JSON as the state store keeps it.

PostgreSQL tests are marked `integration` and use the session's `pg_url` (tests/conftest.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import ConsoleLoader, Pipeline, subjects
from jetl.errors import ConfigError
from jetl.extractors.database import DatabaseExtractor
from jetl.extractors.incremental import Incremental
from jetl.messages.models import RunRequest
from jetl.protocols import ExtractContext
from jetl.registry import register
from jetl.runtime.service import make_context
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.testing.memory import capture
from jetl_extractor.handlers import RunSlots, cursor_of, joined_cursor, make_router

BASE = datetime(2025, 1, 4, 9, 0, 0)
PLUS_TWO = timezone(timedelta(hours=2))


@dataclass
class Source:
    """A table `(id, changed_at, note)` whose `changed_at` is written by `stamp` (text, naive or aware datetime)."""

    engine: sa.Engine
    table: sa.TableClause
    stamp: Callable[[int], Any]
    """The value stored for minute `n` after BASE."""
    next_id: int = 1
    versions: dict[int, int] = field(default_factory=dict)
    """Each row's current minute: a row extracts once per version."""

    def insert(self, minutes: list[int]) -> list[int]:
        """One row per minute (minutes repeat: rows sharing a timestamp); returns their ids, which grow."""
        ids = list(range(self.next_id, self.next_id + len(minutes)))
        self.next_id += len(minutes)
        rows = [{"id": i, "changed_at": self.stamp(m), "note": f"n{i}"} for i, m in zip(ids, minutes, strict=True)]
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)
        self.versions.update(zip(ids, minutes, strict=True))
        return ids

    def touch(self, row: int, minute: int) -> None:
        """Move a row's cursor value forward (an update)."""
        with self.engine.begin() as conn:
            conn.execute(self.table.update().where(self.table.c.id == row).values(changed_at=self.stamp(minute)))
        self.versions[row] = minute

    @property
    def name(self) -> str:
        """The table's name."""
        return self.table.name


def untyped(name: str) -> sa.TableClause:
    """A table for writes with untyped columns: values are stored exactly as given."""
    return sa.table(name, sa.column("id"), sa.column("changed_at"), sa.column("note"))


def sqlite_text_source(folder: Path, ddl_type: str, stamp: Callable[[int], str]) -> Source:
    """A SQLite table whose `changed_at`, declared `ddl_type`, holds the text `stamp` gives."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{folder / 'source.db'}")
    name = f"jetl_inc_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, changed_at {ddl_type} NOT NULL, note TEXT)")
        )
    return Source(engine, untyped(name), stamp)


def iso_t(minute: int) -> str:
    """ISO-8601 text with a "T", as many applications write it."""
    return (BASE + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture
def iso_t_text(tmp_path: Path) -> Iterator[Source]:
    """SQLite, ISO-8601 text with a "T", in a column declared DATETIME (SQLAlchemy parses it on the way out)."""
    source = sqlite_text_source(tmp_path, "DATETIME", iso_t)
    yield source
    source.engine.dispose()


@pytest.fixture
def sqlite_datetime(tmp_path: Path) -> Iterator[Source]:
    """SQLite, a DateTime column created and written through SQLAlchemy (its own text format)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.db'}")
    table = sa.Table(
        f"jetl_inc_{uuid.uuid4().hex[:10]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("note", sa.Text),
    )
    table.create(engine)
    yield Source(engine, table, lambda m: BASE + timedelta(minutes=m))
    engine.dispose()


@pytest.fixture
def pg_timestamptz(pg_url: str) -> Iterator[Source]:
    """PostgreSQL, a timestamptz column written in +02:00, with bigint keys; a table of its own."""
    engine = sa.create_engine(pg_url)
    name = f"jetl_inc_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, changed_at TIMESTAMPTZ NOT NULL, note TEXT)")
        )
    try:
        yield Source(engine, untyped(name), lambda m: (BASE + timedelta(minutes=m)).replace(tzinfo=PLUS_TWO))
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()


async def extract(extractor: DatabaseExtractor, cursor: dict[str, Any] | None, run: int) -> list[int]:
    """One run from `cursor` (JSON round-tripped, as the state store keeps it); the ids it read, in order."""
    stored = None if cursor is None else json.loads(json.dumps(cursor))
    ctx = ExtractContext(pipeline="orders", run_id=f"r{run}", cursor=stored)
    return [r["id"] async for chunk in extractor.extract(ctx) for r in chunk.records]


async def ten_runs(source: Source, extractor: DatabaseExtractor) -> dict[str, Any]:
    """Ten runs with new rows, rows at the boundary's timestamp, an update and unchanged runs between; every
    row version extracts exactly once. Returns the last cursor."""
    seen: list[tuple[int, int]] = []  # (id, minute) of every row read
    cursor: dict[str, Any] | None = None

    def expect(run: int, got: list[int], want: list[int]) -> None:
        assert got == want, f"run {run}"
        seen.extend((i, source.versions[i]) for i in got)

    async def step(run: int, want: list[int]) -> None:
        nonlocal cursor
        got = await extract(extractor, cursor, run)
        expect(run, got, want)
        new = extractor.next_cursor()
        assert new is not None
        if not want:
            assert new == cursor, f"run {run}: an unchanged source leaves the cursor where it was"
        cursor = new

    # 1: twenty rows, four to a minute: chunk boundaries (3 rows) fall inside groups sharing a timestamp
    await step(1, source.insert([m // 4 for m in range(20)]))
    assert cursor is not None and cursor["key_column"] == "id" and cursor["key"] == 20
    await step(2, [])
    # 3: rows at the very timestamp of the boundary (minute 4, the last row's): read, none of the old again
    await step(3, source.insert([4, 4, 4]))
    await step(4, source.insert([5] * 7 + [6]))
    await step(5, [])
    # 6: an update moves row 3's value forward: it reads again, alone
    source.touch(3, 7)
    await step(6, [3])
    await step(7, source.insert([7, 7, 8]))  # again at the boundary's timestamp (minute 7, row 3's)
    await step(8, [])
    await step(9, source.insert([9 + m // 10 for m in range(50)]))
    await step(10, [])

    assert len(set(seen)) == len(seen), "a row version was read twice"
    assert {i for i, _ in seen} == set(source.versions), "every row was read"
    assert set(source.versions.items()) <= set(seen), "every row's latest version was read"
    assert [i for i, _ in seen].count(3) == 2 and len(seen) == len(source.versions) + 1  # the update, once more
    assert cursor is not None
    return cursor


async def test_sqlite_iso_t_text_runs_exactly(iso_t_text: Source) -> None:
    extractor = DatabaseExtractor(
        iso_t_text.engine.url, table=iso_t_text.name, incremental=Incremental("changed_at"), chunk_size=3
    )
    cursor = await ten_runs(iso_t_text, extractor)
    # The mark is the text SQLite holds, "T" and all, still typed as the datetime column it is.
    assert cursor["value"] == "2025-01-04T09:13:00" and cursor["type"] == "datetime"
    assert cursor["key"] == iso_t_text.next_id - 1 and cursor["key_type"] == "int"


async def test_sqlite_text_column_keeps_its_exact_text(tmp_path: Path) -> None:
    source = sqlite_text_source(tmp_path, "TEXT", iso_t)
    extractor = DatabaseExtractor(
        source.engine.url, table=source.name, incremental=Incremental("changed_at"), chunk_size=3
    )
    cursor = await ten_runs(source, extractor)
    assert cursor["value"] == "2025-01-04T09:13:00" and cursor["type"] == "str"
    source.engine.dispose()


async def test_sqlite_datetime_column_runs_exactly(sqlite_datetime: Source) -> None:
    extractor = DatabaseExtractor(
        sqlite_datetime.engine.url, table=sqlite_datetime.name, incremental=Incremental("changed_at"), chunk_size=3
    )
    cursor = await ten_runs(sqlite_datetime, extractor)
    assert cursor["type"] == "datetime"
    assert datetime.fromisoformat(cursor["value"]) == BASE + timedelta(minutes=13)


@pytest.mark.integration
async def test_postgresql_timestamptz_runs_exactly(pg_timestamptz: Source) -> None:
    extractor = DatabaseExtractor(
        pg_timestamptz.engine.url, table=pg_timestamptz.name, incremental=Incremental("changed_at"), chunk_size=3
    )
    cursor = await ten_runs(pg_timestamptz, extractor)
    assert cursor["type"] == "datetime"
    mark = datetime.fromisoformat(cursor["value"])
    assert mark.tzinfo is not None and mark == (BASE + timedelta(minutes=13)).replace(tzinfo=PLUS_TWO)


@pytest.mark.integration
async def test_postgresql_query_with_a_declared_tie_breaker(pg_timestamptz: Source) -> None:
    query = f"SELECT id, changed_at FROM {pg_timestamptz.name} WHERE note <> :skip"
    extractor = DatabaseExtractor(
        pg_timestamptz.engine.url,
        query=query,
        params={"skip": "none"},
        incremental=Incremental("changed_at", tie_breaker="id"),
        chunk_size=3,
    )
    await ten_runs(pg_timestamptz, extractor)


# --- compatibility and configuration -------------------------------------------------------------------------


async def test_a_cursor_stored_before_tie_breakers_still_reads(sqlite_datetime: Source) -> None:
    sqlite_datetime.insert([0, 1, 1, 2])
    extractor = DatabaseExtractor(
        sqlite_datetime.engine.url, table=sqlite_datetime.name, incremental=Incremental("changed_at")
    )
    old = {"column": "changed_at", "value": (BASE + timedelta(minutes=1)).isoformat(), "type": "datetime"}
    assert await extract(extractor, old, 1) == [4]  # strictly after the value, as it was made
    cursor = extractor.next_cursor()
    assert cursor is not None and cursor["key_column"] == "id" and cursor["key"] == 4
    assert await extract(extractor, cursor, 2) == []
    empty = DatabaseExtractor(sqlite_datetime.engine.url, table=sqlite_datetime.name, incremental=Incremental("id"))
    assert await extract(empty, {"column": "id", "value": 9, "type": "int"}, 3) == []
    assert empty.next_cursor() == {"column": "id", "value": 9, "type": "int"}  # nothing read: passed on unchanged


async def test_a_unique_cursor_column_needs_no_key(sqlite_datetime: Source) -> None:
    sqlite_datetime.insert([0, 1, 2])
    extractor = DatabaseExtractor(sqlite_datetime.engine.url, table=sqlite_datetime.name, incremental=Incremental("id"))
    assert await extract(extractor, None, 1) == [1, 2, 3]
    cursor = extractor.next_cursor()
    assert cursor == {"column": "id", "value": 3, "type": "int", "key_column": "id"}
    sqlite_datetime.insert([3])
    assert await extract(extractor, cursor, 2) == [4]


async def test_a_table_without_a_single_key_must_declare_a_tie_breaker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE pairs (a INTEGER, b INTEGER, ts TEXT, PRIMARY KEY (a, b))"))
        conn.execute(sa.text("INSERT INTO pairs VALUES (1, 1, 'x'), (1, 2, 'x'), (2, 1, 'y')"))
    engine.dispose()
    extractor = DatabaseExtractor(url, table="pairs", incremental=Incremental("ts"))
    with pytest.raises(
        ConfigError, match=r"pipeline 'orders'.*table 'pairs'.*no single-column primary key.*tie_breaker="
    ):
        await extract(extractor, None, 1)
    declared = DatabaseExtractor(url, table="pairs", incremental=Incremental("ts", tie_breaker="b"), chunk_size=1)
    read = [r async for c in declared.extract(ExtractContext(pipeline="orders", run_id="r1")) for r in c.records]
    assert [(r["a"], r["b"]) for r in read] == [(1, 1), (1, 2), (2, 1)]
    assert declared.next_cursor() == {
        "column": "ts",
        "value": "y",
        "type": "str",
        "key_column": "b",
        "key": 1,
        "key_type": "int",
    }


def test_an_incremental_query_must_declare_a_tie_breaker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"an incremental query needs Incremental\(tie_breaker=...\)"):
        DatabaseExtractor(f"sqlite:///{tmp_path / 'q.db'}", query="SELECT 1 AS ts", incremental=Incremental("ts"))
    with pytest.raises(ConfigError, match="tie_breaker must be a non-empty name"):
        Incremental("ts", tie_breaker="")


# --- two extractors in one pipeline -----------------------------------------------------------------------------


class Row(BaseModel):
    id: int


async def test_two_database_extractors_keep_their_own_cursors(tmp_path: Path) -> None:
    sources = [sqlite_text_source(tmp_path / str(i), "TEXT", iso_t) for i in (0, 1)]
    extractors = [
        DatabaseExtractor(sources[0].engine.url, table=sources[0].name, incremental=Incremental("changed_at")),
        DatabaseExtractor(sources[1].engine.url, table=sources[1].name, incremental=Incremental("id")),
    ]
    sources[0].insert([5, 5, 6])
    sources[1].insert([1, 2])

    async def run(stored: dict[str, Any] | None, number: int) -> tuple[list[list[int]], dict[str, Any] | None]:
        """One run as the extractor service does it: each extractor from its own part of the stored cursor."""
        got = [await extract(e, cursor_of(stored, i), number) for i, e in enumerate(extractors)]
        return got, json.loads(json.dumps(joined_cursor(extractors)))

    got, stored = await run(None, 1)
    assert got == [[1, 2, 3], [1, 2]]
    assert stored is not None
    assert stored["extractors"]["0"]["column"] == "changed_at" and stored["extractors"]["1"]["column"] == "id"
    sources[1].insert([3])
    got, stored = await run(stored, 2)
    assert got == [[], [3]]  # the second extractor's position did not overwrite the first's
    sources[0].insert([6])
    got, stored = await run(stored, 3)
    assert got == [[4], []]
    assert await run(stored, 4) == ([[], []], stored)

    single = {"column": "id", "value": 2, "type": "int"}  # the single form, as stored before each had its own
    assert cursor_of(single, 0) == cursor_of(single, 1) == single
    assert joined_cursor(extractors[1:]) == extractors[1].next_cursor()  # one extractor keeps the single form

    # The service's own run reports both cursors, each under its extractor's index.
    register([Pipeline(name="two", extractors=extractors, loader=ConsoleLoader(), schema=Row)])
    ctx = make_context("extractor", JetlSettings())
    slots = RunSlots(1, ack_wait=10)
    ctx.broker.include_router(make_router(ctx, slots))
    events = capture(ctx.broker, [Kind.EVENTS])
    async with TestNatsBroker(ctx.broker) as br:
        req = RunRequest(pipeline="two", run_id="two-r1")
        await br.publish(req.model_dump_json().encode(), subjects.run_request("two"), stream="JETL_RUNS")
        await slots.idle()
    done = orjson.loads(events[Kind.EVENTS][-1])
    assert done["type"] == "run.extracted" and done["records"] == 4 + 3
    assert done["cursor"]["extractors"]["0"]["key"] == 4 and done["cursor"]["extractors"]["1"]["value"] == 3
    for source in sources:
        source.engine.dispose()
