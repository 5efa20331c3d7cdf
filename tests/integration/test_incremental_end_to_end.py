"""Incremental loads across runs, end to end: PostgreSQL (timestamptz cursor, bigint keys) through the four
services (a Stack over the test's nats-server) into ClickHouse (chdb) merging by the pipeline's primary key.

Ten runs with new, updated and unchanged rows between them: each run extracts exactly what changed, the
destination then holds exactly the source's rows, each key once, and an unchanged source extracts nothing. Then a
pipeline that loaded before it was incremental is seeded with `jetl cursor set --from-destination` and loads only
what is new.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from jetl.cli import app
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = datetime(2025, 1, 4, 9, 0, tzinfo=UTC)

PIPELINE = """
from datetime import datetime
from pydantic import BaseModel
from jetl import ClickHouseLoader, DatabaseExtractor, Incremental, Pipeline

class Order(BaseModel):
    id: int
    changed_at: datetime
    note: str

def register_pipelines():
    return [
        Pipeline(name="orders", extractors=[DatabaseExtractor("URL", table="ORDERS", chunk_size=5,
                                                              incremental=Incremental("changed_at"))],
                 loader=ClickHouseLoader("orders"), schema=Order, primary_key=["id"], batch_size=7),
        Pipeline(name="late", extractors=[DatabaseExtractor("URL", table="LATE"INCREMENTAL)],
                 loader=ClickHouseLoader("late"), schema=Order, primary_key=["id"], batch_size=7),
    ]
"""


class Source:
    """A PostgreSQL table (id bigint primary key, changed_at timestamptz, note)."""

    def __init__(self, engine: sa.Engine, name: str) -> None:
        self.engine, self.name, self.next_id = engine, name, 1
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, changed_at TIMESTAMPTZ NOT NULL, note TEXT)")
            )

    def insert(self, minutes: list[int]) -> set[int]:
        ids = list(range(self.next_id, self.next_id + len(minutes)))
        self.next_id += len(minutes)
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(f"INSERT INTO {self.name} VALUES (:id, :at, :note)"),
                [
                    {"id": i, "at": BASE + timedelta(minutes=m), "note": f"v0-{i}"}
                    for i, m in zip(ids, minutes, strict=True)
                ],
            )
        return set(ids)

    def update(self, ids: list[int], minute: int, version: int) -> set[int]:
        with self.engine.begin() as conn:
            for i in ids:
                conn.execute(
                    sa.text(f"UPDATE {self.name} SET changed_at = :at, note = :note WHERE id = :id"),
                    {"id": i, "at": BASE + timedelta(minutes=minute), "note": f"v{version}-{i}"},
                )
        return set(ids)

    def rows(self) -> dict[int, str]:
        with self.engine.connect() as conn:
            return {int(i): str(n) for i, n in conn.execute(sa.text(f"SELECT id, note FROM {self.name}"))}


@pytest.fixture
def sources(pg_url: str) -> Iterator[tuple[Source, Source]]:
    engine = sa.create_engine(pg_url)
    names = [f"jetl_e2e_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        yield Source(engine, names[0]), Source(engine, names[1])
    finally:
        with engine.begin() as conn:
            for n in names:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {n}"))
        engine.dispose()


def cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, list(args))
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.exit_code, result.stdout + result.stderr


def write(pipelines: Path, pg_url: str, orders: Source, late: Source, incremental: bool) -> None:
    text = PIPELINE.replace("URL", pg_url).replace("ORDERS", orders.name).replace("LATE", late.name)
    (pipelines / "shop_pipeline.py").write_text(
        text.replace("INCREMENTAL", ', incremental=Incremental("changed_at")' if incremental else "")
    )


def run(settings: JetlSettings, pipeline: str) -> RunState:
    async def go() -> RunState:
        async with JetlClient(settings) as jc:
            req = await jc.request_run(pipeline)
            return await jc.wait(pipeline, req.run_id, timeout=120)

    state = asyncio.run(go())
    assert state.status == "completed", state.error
    assert state.reconciles
    return state


def test_ten_incremental_runs_load_each_row_once_and_a_seeded_cursor_loads_only_what_is_new(
    tmp_path: Path, nats: NatsHandle, pg_url: str, sources: tuple[Source, Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    orders, late = sources
    pipelines, data = tmp_path / "pipelines", tmp_path / "data"
    pipelines.mkdir()
    write(pipelines, pg_url, orders, late, incremental=False)
    for k, v in {"JETL_NATS__URL": nats.url, "JETL_PIPELINES_DIR": str(pipelines), "JETL_DATA_DIR": str(data)}.items():
        monkeypatch.setenv(k, v)
    settings = JetlSettings(nats=NatsSettings(url=nats.url))

    changed = orders.insert([0] * 12 + [1] * 3)  # many rows on one timestamp
    late.insert([m // 4 for m in range(20)])
    minute = 1
    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        assert run(settings, "late").extracted == 20  # loaded in full, before it was incremental
        previous: dict[str, Any] | None = None
        for i in range(10):
            state = run(settings, "orders")
            assert state.extracted == len(changed), f"run {i}: {state.extracted} extracted, {len(changed)} changed"
            assert state.start_cursor == previous  # run.started carries the cursor it starts from
            assert state.cursor is not None and state.cursor["column"] == "changed_at"
            previous = state.cursor
            # between runs: new rows tying the cursor's timestamp and a later one, updates, the rest unchanged
            changed = orders.insert([minute] * 4 + [minute + 1] * 2)
            minute += 1
            changed |= orders.update([2 + i, 9 + i], minute, version=i + 1)
        last = run(settings, "orders")
        assert last.extracted == len(changed)
        idle = run(settings, "orders")
        assert idle.extracted == 0 and idle.cursor == last.cursor  # an unchanged source extracts nothing
        code, counts = cli("counts", "orders", "--json")
        assert counts["distinct_keys"] == len(orders.rows()), counts
        code, out = cli("validate", "--json")
        details = {(r["pipeline"], r["check"]): r["detail"] for r in out["checks"]}
        assert "merge by key ['id']" in details[("orders", "delivery")]
        stack.check()

    write(pipelines, pg_url, orders, late, incremental=True)  # Incremental added to a pipeline that has loaded
    new = late.insert([4, 4, 6])  # two on the loaded maximum's timestamp (ids above it), one later
    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        code, shown = cli("cursor", "show", "late", "--json")
        assert code == 0 and shown["cursor"] is None
        deadline = time.monotonic() + 60
        while cli("counts", "late", "--json")[0] == 3 and time.monotonic() < deadline:  # the loader is starting
            time.sleep(0.5)
        code, out = cli("cursor", "set", "late", "--from-destination", "--reason", "incremental from now", "--json")
        assert code == 0, out
        assert out["cursor"]["value"].startswith("2025-01-04T09:04:00") and out["cursor"]["key"] == 20
        assert out["by"] and out["reason"] == "incremental from now"
        code, out = cli("status", "--rebuild", "late")
        assert code == 0, out
        code, shown = cli("cursor", "show", "late", "--json")
        assert shown["cursor"]["value"].startswith("2025-01-04T09:04:00")  # the rebuilt store keeps the change
        # the same position by hand: after (09:04, id 20), so the new rows tying 09:04 are read
        code, out = cli("cursor", "set", "late", "2025-01-04T09:04:00+00:00", "--key", "20", "--reason", "by hand")
        assert code == 0, out
        state = run(settings, "late")
        assert state.extracted == len(new), state.counts()
        assert run(settings, "late").extracted == 0
        code, out = cli("cursor", "reset", "late", "--reason", "")
        assert code != 0 and "reason" in str(out)
        stack.check()

    for source, table in ((orders, "orders"), (late, "late")):
        rows = chdb.query(data / "chdb", f"SELECT id, note FROM {table} FINAL")
        ids = [int(r["id"]) for r in rows]
        assert len(ids) == len(set(ids)), f"{table}: a key twice"
        assert {int(r["id"]): r["note"] for r in rows} == source.rows()
