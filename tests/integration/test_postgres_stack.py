"""A stack loading into PostgreSQL with two loader replicas: both load batches of one run and the rows are exact;
SIGKILL one of them mid-run and the run still ends with every row once (its unacked batches come back to a replica,
whose `jetl_loads` check skips what the dead one had committed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jetl.events import RunCompleted, RunFailed
from jetl.ops.client import JetlClient
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 2000
BATCH = 50
ACK_WAIT = "5"

PIPELINE = """
import time
from pydantic import BaseModel
from jetl import FileExtractor, LambdaTransformer, Pipeline, PostgresLoader

class Row(BaseModel):
    id: int
    name: str

def paced(r):
    time.sleep(0.001)  # work per batch, so the run lasts long enough to share and to kill a loader in
    return r

def register_pipelines():
    return [Pipeline(name="pg", extractors=[FileExtractor("INPUT")], transformers=[LambdaTransformer(paced)],
                     loader=PostgresLoader("rows", dsn="DSN", schema="SCHEMA"), schema=Row, batch_size=BATCH,
                     primary_key=KEY)]
"""


@pytest.fixture
def pg(pg_url: str) -> Iterator[tuple[str, str]]:
    """(libpq DSN, a schema of this test's own), the schema dropped afterwards."""
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    schema = f"jetl_stack_{uuid.uuid4().hex[:10]}"
    yield dsn, schema
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def write_pipeline(tmp_path: Path, dsn: str, schema: str, key: list[str]) -> Path:
    src, pipelines = tmp_path / "rows.jsonl", tmp_path / "pipelines"
    src.write_text("".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in range(ROWS)))
    pipelines.mkdir()
    text = PIPELINE.replace("INPUT", str(src)).replace("DSN", dsn).replace("SCHEMA", schema)
    (pipelines / "pg_pipeline.py").write_text(text.replace("BATCH", str(BATCH)).replace("KEY", repr(key)))
    return pipelines


def stored(dsn: str, schema: str) -> tuple[int, int, int, int]:
    """(rows, distinct ids, min id, max id) stored in the table."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM "{schema}".rows').fetchone()
    assert row is not None
    return tuple(int(x) for x in row)  # type: ignore[return-value]


async def run(stack: Stack, nats_url: str, kill: str | None = None) -> tuple[RunState, dict[str, int], Any]:
    """Run the pipeline to its end; (its state, batches loaded per loader instance, the loader's count). With
    `kill`, SIGKILL that loader process once a quarter of the batches are loaded, and start it again."""
    settings = JetlSettings(nats=NatsSettings(url=nats_url, ack_wait=float(ACK_WAIT)))
    async with JetlClient(settings) as jc:
        req = await jc.request_run("pg")
        state: RunState | None = None
        by_instance: dict[str, int] = {}
        killed = False
        async for ev in jc.follow("pg", req.run_id):
            state = fold(state, ev)
            if ev.type == "batch.loaded":
                by_instance[ev.instance] = by_instance.get(ev.instance, 0) + 1  # type: ignore[union-attr]
                if kill and not killed and sum(by_instance.values()) >= ROWS // BATCH // 4:
                    killed = True
                    stack.procs[kill].stop(kill=True)
                    stack.procs[kill].start()
            if isinstance(ev, RunCompleted | RunFailed):
                break
        assert state is not None
        assert not kill or killed
        return state, by_instance, await jc.destination_count("pg")


def test_two_loader_replicas_share_a_run_into_postgres(tmp_path: Path, nats: NatsHandle, pg: tuple[str, str]) -> None:
    dsn, schema = pg
    pipelines = write_pipeline(tmp_path, dsn, schema, ["id"])
    with Stack(data_dir=tmp_path / "data", pipelines_dir=pipelines, nats_url=nats.url, replicas={"loader": 2}) as stack:
        assert "loader2" in stack.procs
        state, by_instance, count = asyncio.run(asyncio.wait_for(run(stack, nats.url), 240))
    assert state.status == "completed", state.error
    assert (state.extracted, state.loaded, state.rejected) == (ROWS, ROWS, 0)
    assert len(by_instance) == 2, f"one loader did all the work: {by_instance}"
    assert stored(dsn, schema) == (ROWS, ROWS, 0, ROWS - 1)
    assert count.by_run == {state.run_id: ROWS}


def test_sigkill_a_postgres_loader_replica_mid_run_ends_exact(
    tmp_path: Path, nats: NatsHandle, pg: tuple[str, str]
) -> None:
    dsn, schema = pg
    pipelines = write_pipeline(tmp_path, dsn, schema, [])  # append: a batch loaded twice would show as duplicates
    with Stack(
        data_dir=tmp_path / "data",
        pipelines_dir=pipelines,
        nats_url=nats.url,
        replicas={"loader": 2},
        extra_env={"JETL_NATS__ACK_WAIT": ACK_WAIT},
    ) as stack:
        state, _, count = asyncio.run(asyncio.wait_for(run(stack, nats.url, kill="loader2"), 240))
    assert state.status == "completed", state.error
    assert stored(dsn, schema) == (ROWS, ROWS, 0, ROWS - 1)
    assert count.by_run == {state.run_id: ROWS}
