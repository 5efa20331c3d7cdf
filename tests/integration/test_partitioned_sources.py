"""Partitioned extraction of a database table (key ranges) and of an HTTP API (date windows), through the four
services with two extractor replicas sharing each run's partitions: every row lands exactly once in ClickHouse
(chdb), the ledger reconciles, and an incremental run's cursor moves once, to the position read when it was split."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jetl.events import BatchExtracted, Event, RunPartitioned
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb
from jetl.testing.api import json_api
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = datetime(2026, 3, 1, tzinfo=UTC)

PACED = '''
import asyncio

class Paced:
    """Takes its time per chunk, so one replica cannot take every partition before the other starts."""

    async def extract_partition(self, ctx, partition):
        async for chunk in super().extract_partition(ctx, partition):
            await asyncio.sleep(0.05)
            yield chunk
'''

DB_PIPELINE = """
from datetime import datetime
from pydantic import BaseModel
from jetl import ClickHouseLoader, DatabaseExtractor, Incremental, Pipeline
PACED
class Order(BaseModel):
    id: int
    changed_at: datetime

class PacedTable(Paced, DatabaseExtractor):
    pass

def register_pipelines():
    return [Pipeline(name="orders", extractors=[PacedTable("URL", table="TABLE", incremental=Incremental("changed_at"),
                                                           partition_rows=300, chunk_size=100)],
                     loader=ClickHouseLoader("orders", order_by=["id"]), schema=Order, batch_size=100)]
"""

HTTP_PIPELINE = """
from datetime import datetime, timedelta
from pydantic import BaseModel
from jetl import ClickHouseLoader, Pipeline
from jetl.extractors.http import HttpExtractor, PageNumberPagination
PACED
class Event(BaseModel):
    id: int
    at: datetime

class PacedApi(Paced, HttpExtractor):
    pass

def register_pipelines():
    return [Pipeline(name="events", extractors=[PacedApi("URL", records_path="items", paginate=PageNumberPagination(),
                                                         interval_start_param="from", interval_end_param="to",
                                                         partition_window=timedelta(days=1), chunk_size=20)],
                     loader=ClickHouseLoader("events", order_by=["id"]), schema=Event, batch_size=20)]
"""


def run(nats: NatsHandle, pipeline: str, **interval: datetime) -> tuple[RunState, list[Event]]:
    """One run to its end: its state and its batch.extracted and run.partitioned events."""

    async def go() -> tuple[RunState, list[Event]]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            req = await jc.request_run(pipeline, **interval)
            events: list[Event] = []
            keep = (BatchExtracted, RunPartitioned)
            state = await jc.wait(
                pipeline,
                req.run_id,
                timeout=180,
                on_event=lambda ev, _: events.append(ev) if isinstance(ev, keep) else None,
            )
            return state, events

    state, events = asyncio.run(go())
    assert state.status == "completed", state.error
    assert state.reconciles
    return state, events


def shared_by_two(events: list[Event]) -> set[str]:
    """The partitions the run's batches came from; both replicas extracted some of them."""
    by_instance: dict[str, set[str]] = {}
    for ev in events:
        if isinstance(ev, BatchExtracted):
            _run, partition, _seq = ev.batch_id.split("/")
            by_instance.setdefault(ev.instance, set()).add(partition)
    assert len(by_instance) == 2, f"one extractor did every partition: {by_instance}"
    return set().union(*by_instance.values())


@pytest.fixture
def table(pg_url: str) -> Iterator[tuple[sa.Engine, str]]:
    engine = sa.create_engine(pg_url)
    name = f"jetl_parts_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, changed_at TIMESTAMPTZ NOT NULL)"))
    try:
        yield engine, name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()


def insert(engine: sa.Engine, name: str, ids: range) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"INSERT INTO {name} VALUES (:id, :at)"),
            [{"id": i, "at": BASE + timedelta(seconds=i // 4)} for i in ids],  # four rows share each timestamp
        )


def test_two_extractors_share_a_tables_key_ranges_and_the_cursor_moves_once(
    tmp_path: Path, nats: NatsHandle, pg_url: str, table: tuple[sa.Engine, str]
) -> None:
    engine, name = table
    insert(engine, name, range(1, 3001))
    pipelines, data = tmp_path / "pipelines", tmp_path / "data"
    pipelines.mkdir()
    (pipelines / "orders_pipeline.py").write_text(
        DB_PIPELINE.replace("PACED", PACED).replace("URL", pg_url).replace("TABLE", name)
    )

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url, replicas={"extractor": 2}):
        first, events = run(nats, "orders")
        assert first.loaded == 3000 and first.partitions == 10
        assert len(shared_by_two(events)) == 10
        planned = next(ev for ev in events if isinstance(ev, RunPartitioned)).cursor
        assert planned is not None and planned["key"] == 3000  # the furthest row, read when the run was split
        assert first.cursor == planned

        insert(engine, name, range(3001, 3701))  # 700 new rows: three ranges of the next run
        second, events = run(nats, "orders")
        assert second.start_cursor == planned  # the cursor moved once, to where the first run was split
        assert second.loaded == 700 and second.partitions == 3
        assert second.cursor is not None and second.cursor["key"] == 3700

    rows = chdb.query(
        data / "chdb", "SELECT count() AS n, uniqExact(id) AS u, min(id) AS lo, max(id) AS hi FROM orders"
    )
    assert rows == [{"n": 3700, "u": 3700, "lo": 1, "hi": 3700}]


@pytest.fixture
def api() -> Iterator[str]:
    """Events every 37 minutes over eight days; `from` <= at < `to`, 25 a page."""
    events = [{"id": i, "at": (BASE + timedelta(minutes=37 * i)).isoformat()} for i in range(300)]

    def answer(q: dict[str, str]) -> dict[str, Any]:
        lo, hi = datetime.fromisoformat(q["from"]), datetime.fromisoformat(q["to"])
        rows = [e for e in events if lo <= datetime.fromisoformat(str(e["at"])) < hi]
        page = int(q["page"])
        return {"items": rows[(page - 1) * 25 : page * 25]}

    with json_api(answer, "/events") as url:
        yield url


def test_two_extractors_share_an_apis_date_windows(tmp_path: Path, nats: NatsHandle, api: str) -> None:
    pipelines, data = tmp_path / "pipelines", tmp_path / "data"
    pipelines.mkdir()
    (pipelines / "events_pipeline.py").write_text(HTTP_PIPELINE.replace("PACED", PACED).replace("URL", api))

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url, replicas={"extractor": 2}):
        state, events = run(nats, "events", data_interval_start=BASE, data_interval_end=BASE + timedelta(days=8))
        assert state.loaded == 300 and state.partitions == 8
        assert len(shared_by_two(events)) == 8

    rows = chdb.query(
        data / "chdb", "SELECT count() AS n, uniqExact(id) AS u, min(id) AS lo, max(id) AS hi FROM events"
    )
    assert rows == [{"n": 300, "u": 300, "lo": 0, "hi": 299}]
