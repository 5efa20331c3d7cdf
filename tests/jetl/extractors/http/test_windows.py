"""HttpExtractor date windows: a run's data interval split into windows, each requested and paginated on its own."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from jetl.errors import ConfigError
from jetl.extractors.http import HttpExtractor, Incremental, PageNumberPagination
from jetl.protocols import ExtractContext, Partition

START = datetime(2026, 3, 1, tzinfo=UTC)
EVENTS = [{"id": i, "at": (START + timedelta(minutes=37 * i)).isoformat()} for i in range(300)]  # ~7.7 days


def api(requests: list[dict[str, str]]) -> httpx.MockTransport:
    """Events with `from` <= at < `to`, 25 a page."""

    def handle(request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        requests.append(q)
        lo, hi = datetime.fromisoformat(q["from"]), datetime.fromisoformat(q["to"])
        rows = [e for e in EVENTS if lo <= datetime.fromisoformat(e["at"]) < hi]
        page = int(q["page"])
        return httpx.Response(200, json={"items": rows[(page - 1) * 25 : page * 25]})

    return httpx.MockTransport(handle)


def windowed(requests: list[dict[str, str]], **kw: Any) -> HttpExtractor:
    return HttpExtractor(
        "http://api.test/events",
        records_path="items",
        paginate=PageNumberPagination(),
        interval_start_param="from",
        interval_end_param="to",
        transport=api(requests),
        **kw,
    )


def test_the_data_interval_splits_into_windows_each_paginated_on_its_own() -> None:
    requests: list[dict[str, str]] = []
    ex = windowed(requests, partition_window=timedelta(days=1), chunk_size=10)
    ctx = ExtractContext(
        pipeline="p", run_id="r", data_interval_start=START, data_interval_end=START + timedelta(days=8)
    )
    parts = [Partition(json.loads(json.dumps(p.spec))) for p in ex.partitions(ctx) or []]
    assert len(parts) == 8
    assert parts[0].spec == {"start": START.isoformat(), "end": (START + timedelta(days=1)).isoformat()}

    async def read(part: Partition) -> list[int]:
        return [r["id"] async for c in ex.extract_partition(ctx, part) for r in c.records]

    seen = [i for part in parts for i in asyncio.run(read(part))]
    assert seen == list(range(300))
    first_day = [q for q in requests if q["from"] == START.isoformat()]
    assert [q["page"] for q in first_day] == ["1", "2", "3"]  # 39 events that day: pages of 25, then an empty one
    assert ex.next_cursor() is None


def test_a_last_window_is_cut_at_the_interval_end_and_no_interval_is_not_split() -> None:
    ex = windowed([], partition_window=timedelta(hours=10))
    ctx = ExtractContext(
        pipeline="p", run_id="r", data_interval_start=START, data_interval_end=START + timedelta(days=1)
    )
    parts = ex.partitions(ctx) or []
    assert [p.spec["end"] for p in parts][-1] == (START + timedelta(days=1)).isoformat() and len(parts) == 3
    assert ex.partitions(ExtractContext(pipeline="p", run_id="r")) is None
    assert windowed([]).partitions(ctx) is None  # no window: read whole


def test_windows_are_refused_where_they_cannot_work() -> None:
    with pytest.raises(ConfigError, match="positive timedelta"):
        windowed([], partition_window=timedelta(0))
    with pytest.raises(ConfigError, match="needs interval_start_param"):
        HttpExtractor("http://api.test/e", partition_window=timedelta(days=1))
    with pytest.raises(ConfigError, match="cannot go together"):
        windowed([], partition_window=timedelta(days=1), incremental=Incremental(param="since", field="at"))
