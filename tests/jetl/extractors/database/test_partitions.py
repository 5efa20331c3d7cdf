"""DatabaseExtractor key-range partitions, on SQLite and the real PostgreSQL (`pg_url`, tests/conftest.py): every row
of the run's window in exactly one partition, each partition the same rows in the same order every time it is read,
and the run's next cursor known before any partition is read."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jetl.errors import ConfigError, TerminalError
from jetl.extractors.database import DatabaseExtractor
from jetl.extractors.incremental import Incremental
from jetl.protocols import ExtractContext, Partition

BASE = datetime(2025, 1, 4, 9, 0, 0)


@dataclass
class Table:
    url: str
    engine: sa.Engine
    table: sa.Table

    def insert(self, ids: range, region: Any = None) -> None:
        rows = [
            {"id": i, "region": region(i) if region else i % 5, "changed_at": BASE + timedelta(minutes=i // 3)}
            for i in ids
        ]
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Table]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 's.db'}"
    engine = sa.create_engine(url)
    table = sa.Table(
        f"jetl_parts_{uuid.uuid4().hex[:10]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("region", sa.Integer, nullable=True),
        sa.Column("changed_at", sa.DateTime, nullable=False),
    )
    table.create(engine)
    try:
        yield Table(url, engine, table)
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()


def ctx(cursor: dict[str, Any] | None = None) -> ExtractContext:
    stored = None if cursor is None else json.loads(json.dumps(cursor))  # as the state store keeps it
    return ExtractContext(pipeline="p", run_id="r", cursor=stored)


def plan(ex: DatabaseExtractor, cursor: dict[str, Any] | None = None) -> list[Partition]:
    """Partitions as a replica receives them: their specs round-tripped through JSON."""
    parts = ex.partitions(ctx(cursor))
    assert parts is not None
    return [Partition(json.loads(json.dumps(p.spec, default=str))) for p in parts]


def read(ex: DatabaseExtractor, part: Partition, cursor: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async for chunk in ex.extract_partition(ctx(cursor), part):
            assert 0 < len(chunk.records) <= ex.chunk_size
            out.extend(chunk.records)
        return out

    return asyncio.run(go())


def test_primary_key_ranges_hold_every_row_once_the_same_every_time(source: Table) -> None:
    source.insert(range(1, 1001))
    ex = DatabaseExtractor(source.url, table=source.table.name, partition_rows=120, chunk_size=50)
    parts = plan(ex)
    assert len(parts) == 9  # ceil(1000 / 120)
    seen: list[int] = []
    for part in parts:
        rows = read(ex, part)
        ids = [r["id"] for r in rows]
        assert ids == sorted(ids) and 0 < len(ids) <= 120
        assert read(ex, part) == rows  # extracted again: the same records, in the same order
        seen.extend(ids)
    assert seen == list(range(1, 1001))
    assert ex.next_cursor() is None  # not incremental


def test_incremental_window_ends_at_the_position_read_at_planning(source: Table) -> None:
    source.insert(range(1, 301))
    ex = DatabaseExtractor(
        source.url, table=source.table.name, incremental=Incremental("changed_at"), partition_rows=64, chunk_size=30
    )
    parts = plan(ex)
    reached = ex.next_cursor()
    assert reached is not None and reached["key"] == 300
    source.insert(range(301, 331))  # arrive after planning: the next run's
    first = sorted(r["id"] for part in parts for r in read(ex, part))
    assert first == list(range(1, 301))

    parts = plan(ex, reached)  # the next run starts from the cursor the first one reached
    assert sorted(r["id"] for part in parts for r in read(ex, part, reached)) == list(range(301, 331))
    assert ex.next_cursor()["key"] == 330  # type: ignore[index]
    assert plan(ex, ex.next_cursor()) == []  # nothing new: no partition, the cursor stays
    assert ex.next_cursor()["key"] == 330  # type: ignore[index]


def test_a_declared_partition_column_with_repeats_and_nulls(source: Table) -> None:
    source.insert(range(1, 501), region=lambda i: None if i % 10 == 0 else i % 7)
    ex = DatabaseExtractor(
        source.url, table=source.table.name, partition_column="region", partition_rows=100, chunk_size=40
    )
    parts = plan(ex)
    assert 2 <= len(parts) <= 5
    ids = [r["id"] for part in parts for r in read(ex, part)]
    assert sorted(ids) == list(range(1, 501)) and len(ids) == 500


def test_not_partitioned_without_partition_rows_and_refused_where_it_cannot_work(source: Table) -> None:
    assert DatabaseExtractor(source.url, table=source.table.name).partitions(ctx()) is None
    with pytest.raises(ConfigError, match="a query has no key"):
        DatabaseExtractor(source.url, query="SELECT 1 AS id", partition_rows=10)
    with pytest.raises(ConfigError, match="partition_column= needs partition_rows="):
        DatabaseExtractor(source.url, table=source.table.name, partition_column="region")
    with pytest.raises(ConfigError, match="no column 'nope'"):
        plan(DatabaseExtractor(source.url, table=source.table.name, partition_rows=10, partition_column="nope"))
    keyless = sa.Table(f"jetl_keyless_{uuid.uuid4().hex[:8]}", sa.MetaData(), sa.Column("v", sa.Integer))
    keyless.create(source.engine)
    try:
        with pytest.raises(ConfigError, match="declare partition_column="):
            plan(DatabaseExtractor(source.url, table=keyless.name, partition_rows=10))
    finally:
        keyless.drop(source.engine)


def test_a_partition_naming_another_column_or_a_malformed_range_is_refused(source: Table) -> None:
    source.insert(range(1, 101))
    ex = DatabaseExtractor(source.url, table=source.table.name, partition_rows=40)
    good = plan(ex)[0].spec
    assert read(ex, Partition(good))  # the control: as planned, it reads
    for forged in (
        {**good, "column": "region"},  # ranges of another column than the configured one
        {**good, "lo": "1; drop table x"},
        {**good, "last": "yes"},
        {**good, "extra": 1},
        {"column": "id"},
    ):
        with pytest.raises(TerminalError, match="refused"):
            read(ex, Partition(forged))
    whole = DatabaseExtractor(source.url, table=source.table.name)  # not partitioned: no range is its own
    with pytest.raises(TerminalError, match="refused"):
        read(whole, Partition(good))
