"""HttpExtractor's exact cursor over ten runs against a real HTTP server (a threaded `http.server` on 127.0.0.1
serving JSON pages from an in-memory table the test changes between runs), loaded into ClickHouse (chdb) merging by
the pipeline's primary key.

The API filters `updated_since` inclusively, as most do, and many rows share one timestamp: the boundary rows come
back every run, and the extractor must drop exactly those it has already taken.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from jetl import ClickHouseLoader, ConsoleLoader, HttpExtractor, LoadContext, Pipeline
from jetl.errors import ConfigError
from jetl.extractors.http import Incremental, PageNumberPagination
from jetl.loaders.clickhouse import close_clients
from jetl.protocols import ExtractContext, log_version
from jetl.testing.api import json_api

BASE = datetime(2025, 1, 4, 9, 0, tzinfo=UTC)


class Row(BaseModel):
    id: int
    updated_at: datetime
    name: str


class Table:
    """The API's data: rows by id, changed by the test between runs (the server thread reads it under a lock)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.next_id = 1
        self.requests: list[dict[str, str]] = []

    def stamp(self, minute: int) -> str:
        return (BASE + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")

    def insert(self, minutes: list[int]) -> list[int]:
        with self.lock:
            ids = list(range(self.next_id, self.next_id + len(minutes)))
            self.next_id += len(minutes)
            for i, m in zip(ids, minutes, strict=True):
                self.rows[i] = {"id": i, "updated_at": self.stamp(m), "name": f"v0-{i}"}
        return ids

    def update(self, row: int, minute: int) -> None:
        with self.lock:
            version = int(self.rows[row]["name"].split("-")[0][1:]) + 1
            self.rows[row] = {"id": row, "updated_at": self.stamp(minute), "name": f"v{version}-{row}"}

    def page(self, since: str | None, page: int, size: int) -> list[dict[str, Any]]:
        """Rows with updated_at >= since (inclusive, compared as instants), in (updated_at, id) order."""
        with self.lock:
            rows = list(self.rows.values())
        if since is not None:
            bound = datetime.fromisoformat(since)
            rows = [r for r in rows if datetime.fromisoformat(r["updated_at"]) >= bound]
        rows.sort(key=lambda r: (r["updated_at"], r["id"]))
        return rows[(page - 1) * size : page * size]


@pytest.fixture
def api() -> Iterator[tuple[str, Table]]:
    table = Table()

    def answer(query: dict[str, str]) -> dict[str, Any]:
        table.requests.append(query)
        return {"items": table.page(query.get("updated_since"), int(query["page"]), int(query["per_page"]))}

    with json_api(answer) as url:
        yield url, table


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    close_clients()
    yield f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}"
    close_clients()


def extractor(url: str, tie_breaker: str | None = "id") -> HttpExtractor:
    return HttpExtractor(
        url,
        records_path="items",
        paginate=PageNumberPagination(size_param="per_page", size=7),
        incremental=Incremental(param="updated_since", field="updated_at", tie_breaker=tie_breaker),
        chunk_size=10,
    )


_LOG: list[str] = []
"""The batches loaded so far, in order: each one's place in the log is its version."""


async def run_once(ex: HttpExtractor, p: Pipeline, run: str, cursor: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One run as the services do it: extract from the stored cursor (round-tripped as JSON), validate, load, each
    batch at its place in the log (a later run's rows outrank an earlier run's, as the transformer's versions do)."""
    ctx = ExtractContext(pipeline=p.name, run_id=run, cursor=json.loads(json.dumps(cursor)) if cursor else None)
    taken: list[dict[str, Any]] = []
    seq = 0
    async for chunk in ex.extract(ctx):
        assert not chunk.rejected
        rows = [Row.model_validate(r).model_dump() for r in chunk.records]
        _LOG.append(run)
        at = log_version(len(_LOG))
        p.loader.load(
            rows, LoadContext(pipeline=p.name, run_id=run, batch_id=f"{run}/{seq:06d}", schema=Row, version=at)
        )
        taken.extend(chunk.records)
        seq += 1
    return taken


def keyed_pipeline(ex: HttpExtractor, dsn: str) -> Pipeline:
    loader = ClickHouseLoader(f"h_{uuid.uuid4().hex[:10]}", dsn=dsn)
    return Pipeline(name="api", extractors=[ex], loader=loader, schema=Row, primary_key=["id"])


def destination(p: Pipeline) -> dict[int, str]:
    loader = p.loader
    assert isinstance(loader, ClickHouseLoader)
    rows = loader.client().query(f"SELECT id, name FROM {loader.qualified} FINAL").result_rows
    ids = [int(i) for i, _ in rows]
    assert len(ids) == len(set(ids)), "a key is in the destination twice"
    return {int(i): str(n) for i, n in rows}


async def test_ten_runs_take_each_change_once_with_many_rows_on_one_timestamp(api: tuple[str, Table], dsn: str) -> None:
    url, table = api
    ex = extractor(url)
    p = keyed_pipeline(ex, dsn)
    assert isinstance(p.loader, ClickHouseLoader) and p.loader.mode == "merge" and p.loader.order_by == ["id"]
    expected = set(table.insert([0] * 40))  # 40 rows on one timestamp, over 6 pages of 7
    cursor: dict[str, Any] | None = None
    minute = 0
    for run in range(10):
        taken = await run_once(ex, p, f"r{run}", cursor)
        ids = [r["id"] for r in taken]
        assert sorted(ids) == sorted(expected), f"run {run}: took {sorted(ids)}, changed {sorted(expected)}"
        cursor = ex.next_cursor()
        assert cursor is not None and cursor["tie_breaker"] == "id"
        # between runs: new rows on the last timestamp (ties with the cursor) and on a later one, updates, no-ops
        minute += 1 if run % 3 else 0  # every third run, the new rows share the cursor's own timestamp
        new = table.insert([minute] * 6 + [minute + 1] * 2)
        minute += 1
        touched = [3 + run, 17 + run]
        for row in touched:
            table.update(row, minute)
        expected = set(new) | set(touched)

    final = await run_once(ex, p, "r10", cursor)  # the last changes
    assert sorted(r["id"] for r in final) == sorted(expected)
    cursor = ex.next_cursor()
    table.requests.clear()
    assert await run_once(ex, p, "r11", cursor) == []  # nothing changed: nothing extracted
    assert table.requests[0]["updated_since"] == cursor["value"]  # the API still sent the boundary value
    assert ex.next_cursor() == cursor  # and the cursor stays where it was
    assert destination(p) == {i: r["name"] for i, r in table.rows.items()}


async def test_a_cursor_without_tie_breaker_takes_each_timestamp_once(api: tuple[str, Table]) -> None:
    url, table = api
    ex = extractor(url, tie_breaker=None)
    table.insert([0] * 10)
    p = Pipeline(name="api", extractors=[ex], loader=ConsoleLoader(), schema=Row)
    first = [r["id"] for r in await run_once(ex, p, "a", None)]
    assert len(first) == 10
    cursor = ex.next_cursor()
    assert cursor == {"field": "updated_at", "value": table.stamp(0)}
    table.insert([1, 1])
    assert [r["id"] for r in await run_once(ex, p, "b", cursor)] == [11, 12]  # the boundary rows are not again


async def test_the_skip_line_names_the_cursor_the_records_were_held_against(api: tuple[str, Table]) -> None:
    from structlog.testing import capture_logs

    url, table = api
    ex = extractor(url, tie_breaker=None)
    table.insert([0] * 3)
    p = Pipeline(name="api", extractors=[ex], loader=ConsoleLoader(), schema=Row)
    await run_once(ex, p, "a", None)
    cursor = ex.next_cursor()
    assert cursor is not None
    table.insert([1])
    with capture_logs() as logs:
        assert len(await run_once(ex, p, "b", cursor)) == 1
    moved = ex.next_cursor()
    assert moved is not None and moved["value"] != cursor["value"]
    line = next(e for e in logs if e["event"] == "records at or before the cursor skipped")
    assert line["skipped"] == 3 and line["cursor"]["value"] == cursor["value"]  # not the cursor the run moved to


async def test_a_loaded_pipeline_made_incremental_is_seeded_from_the_destination(
    api: tuple[str, Table], dsn: str
) -> None:
    url, table = api
    table.insert([m // 3 for m in range(30)])  # three rows a timestamp
    full = HttpExtractor(url, records_path="items", paginate=PageNumberPagination(size_param="per_page", size=7))
    before = keyed_pipeline(full, dsn)
    async for chunk in full.extract(ExtractContext(pipeline="api", run_id="full")):
        rows = [Row.model_validate(r).model_dump() for r in chunk.records]
        before.loader.load(rows, LoadContext(pipeline="api", run_id="full", batch_id="full/000000", schema=Row))

    ex = extractor(url)  # the same API, now incremental: its first run has no cursor
    after = Pipeline(name="api", extractors=[ex], loader=before.loader, schema=Row, primary_key=["id"])
    assert isinstance(after.loader, ClickHouseLoader)
    position = after.loader.max_position("api", "updated_at", "id")
    assert position is not None and position[1] == 30
    assert position[0] == datetime(2025, 1, 4, 9, 9, tzinfo=UTC)  # the instant, its zone kept (was naive)
    seeded = ex.cursor_at(*position)
    assert seeded["key"] == 30 and seeded["value"] == "2025-01-04T09:09:00+00:00"  # the same instant, typed
    new = table.insert([9, 9, 10])  # two more on the loaded maximum's timestamp, one later
    taken = [r["id"] for r in await run_once(ex, after, "inc", seeded)]
    assert taken == new  # exactly the new rows: none of the 30 again, none of the tied ones skipped
    assert destination(after) == {i: r["name"] for i, r in table.rows.items()}


def test_a_primary_key_must_be_a_schema_field_and_the_loader_must_merge() -> None:
    with pytest.raises(ConfigError, match="primary_key field 'nope'"):
        Pipeline(
            name="x", extractors=[extractor("http://h/x")], loader=ConsoleLoader(), schema=Row, primary_key=["nope"]
        )
    with pytest.raises(ConfigError, match="cannot keep one row per key"):
        Pipeline(name="x", extractors=[extractor("http://h/x")], loader=ConsoleLoader(), schema=Row, primary_key=["id"])
    with pytest.raises(ConfigError, match="differs from the pipeline's primary key"):
        Pipeline(
            name="x",
            extractors=[extractor("http://h/x")],
            loader=ClickHouseLoader("t", order_by=["name"]),
            schema=Row,
            primary_key=["id"],
        )
