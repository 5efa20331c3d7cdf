"""Horizontal scaling: two transformer processes bind the same durable pull consumer and share the batches; every
row still lands exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from jetl.events import BatchExtracted, BatchTransformed
from jetl.ops.client import JetlClient
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = """
import time
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, LambdaTransformer, Pipeline

class Row(BaseModel):
    id: int

def slow(r):
    time.sleep(0.002)  # enough work per batch that one transformer cannot take them all
    return r

def register_pipelines():
    return [Pipeline(name="wide", extractors=[FileExtractor("INPUT")], transformers=[LambdaTransformer(slow)],
                     loader=ClickHouseLoader("wide", order_by=["id"]), schema=Row, batch_size=50)]
"""

POSTGRES_PIPELINE = """
from pydantic import BaseModel
from jetl import FileExtractor, Pipeline, PostgresLoader

class Row(BaseModel):
    id: int

def register_pipelines():
    return [Pipeline(name="pg", extractors=[FileExtractor("rows.jsonl")],
                     loader=PostgresLoader("pg", dsn="postgresql://postgres@127.0.0.1:5432/test"), schema=Row)]
"""


async def run_collecting(nats: NatsHandle, pipeline: str, kind: type[Any]) -> tuple[Any, list[Any]]:
    """Run `pipeline` to its end; its state and its events of `kind`."""
    async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
        req = await jc.request_run(pipeline)
        events: list[Any] = []
        state = await jc.wait(
            pipeline,
            req.run_id,
            timeout=180,
            on_event=lambda ev, _: events.append(ev) if isinstance(ev, kind) else None,
        )
        return state, events


def test_two_transformers_share_one_durable_consumer(tmp_path: Path, nats: NatsHandle) -> None:
    src, pipelines, data = tmp_path / "rows.jsonl", tmp_path / "pipelines", tmp_path / "data"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(2000)))
    pipelines.mkdir()
    (pipelines / "wide_pipeline.py").write_text(PIPELINE.replace("INPUT", str(src)))

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url, replicas={"transformer": 2}) as stack:
        assert sorted(stack.procs) == ["extractor", "loader", "scheduler", "transformer", "transformer2"]
        state, transformed = asyncio.run(run_collecting(nats, "wide", BatchTransformed))

    assert state.status == "completed" and state.loaded == 2000  # type: ignore[attr-defined]
    assert len(transformed) == 40
    instances = {ev.instance for ev in transformed}
    assert len(instances) == 2, f"one transformer did all the work: {instances}"
    rows = chdb.query(data / "chdb", "SELECT count() AS n, uniqExact(id) AS u FROM wide")
    assert rows[0] == {"n": 2000, "u": 2000}


def test_a_stack_scales_what_can_be_scaled_and_says_what_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jetl.errors import ConfigError
    from jetl.testing.cli import CliResult, jetl

    monkeypatch.delenv("JETL_CLICKHOUSE__DSN", raising=False)
    with pytest.raises(ConfigError, match="cannot scale 'transform'"):
        Stack(data_dir=tmp_path, pipelines_dir=tmp_path, replicas={"transform": 2})
    with pytest.raises(ConfigError, match="at least 1"):
        Stack(data_dir=tmp_path, pipelines_dir=tmp_path, replicas={"transformer": 0})
    # the loaders say whether they allow replicas: a pipeline into chdb does not (one process may open its folder),
    # the same pipeline into a ClickHouse server does, and so does one into PostgreSQL next to it
    (tmp_path / "wide_pipeline.py").write_text(PIPELINE.replace("INPUT", str(tmp_path / "rows.jsonl")))
    (tmp_path / "pg_pipeline.py").write_text(POSTGRES_PIPELINE)
    assert Stack(data_dir=tmp_path, pipelines_dir=tmp_path / "none", replicas={"loader": 2}).replicas
    with pytest.raises(ConfigError, match=r"pipeline 'wide'.*chdb"):
        Stack(data_dir=tmp_path, pipelines_dir=tmp_path, replicas={"loader": 2})
    server = {"JETL_CLICKHOUSE__DSN": "http://ch:8123"}
    assert Stack(data_dir=tmp_path, pipelines_dir=tmp_path, replicas={"loader": 2}, extra_env=server).replicas
    (tmp_path / "wide_pipeline.py").unlink()
    assert Stack(data_dir=tmp_path, pipelines_dir=tmp_path, replicas={"loader": 2}).replicas

    def up(*args: str) -> CliResult:
        return jetl("up", *args, nats_url="nats://127.0.0.1:1", pipelines_dir=tmp_path, data_dir=tmp_path)

    (tmp_path / "wide_pipeline.py").write_text(PIPELINE.replace("INPUT", str(tmp_path / "rows.jsonl")))

    bad = up("--scale", "transformer")
    assert bad.code == 2 and "expected SERVICE=N" in bad.stdout + bad.stderr
    bad = up("--scale", "loader=2")
    assert bad.code == 2 and "chdb" in bad.stdout + bad.stderr


PARTITIONED = """
import asyncio
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, Pipeline

class Row(BaseModel):
    id: int

class Paced:
    '''A FileExtractor that takes its time per chunk, so one replica cannot take every partition.'''

    def __init__(self, inner):
        self.inner = inner

    def partitions(self, ctx):
        return self.inner.partitions(ctx)

    async def extract_partition(self, ctx, partition):
        async for chunk in self.inner.extract_partition(ctx, partition):
            await asyncio.sleep(0.05)
            yield chunk

    def extract(self, ctx):
        return self.inner.extract(ctx)

    def next_cursor(self):
        return self.inner.next_cursor()

    @property
    def keeps_cursor(self):
        return self.inner.keeps_cursor

    def check(self, settings):
        return self.inner.check(settings)

def register_pipelines():
    return [Pipeline(name="split", extractors=[Paced(FileExtractor("INPUT", chunk_size=100, partition_bytes=4000))],
                     loader=ClickHouseLoader("split", order_by=["id"]), schema=Row, batch_size=100)]
"""


def test_two_extractors_split_one_large_file_by_byte_ranges(tmp_path: Path, nats: NatsHandle) -> None:
    src, pipelines, data = tmp_path / "big.jsonl", tmp_path / "pipelines", tmp_path / "data"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(3000)))  # ~35 kB: 9 byte-range partitions
    pipelines.mkdir()
    (pipelines / "split_pipeline.py").write_text(PARTITIONED.replace("INPUT", str(src)))

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url, replicas={"extractor": 2}) as stack:
        assert sorted(stack.procs) == ["extractor", "extractor2", "loader", "scheduler", "transformer"]
        state, extracted = asyncio.run(run_collecting(nats, "split", BatchExtracted))

    assert state.status == "completed" and state.loaded == 3000 and state.reconciles  # type: ignore[attr-defined]
    partitions = {ev.batch_id.split("/")[1] for ev in extracted}
    assert len(partitions) >= 8 and all(p.startswith("p") for p in partitions), partitions
    by_instance: dict[str, set[str]] = {}
    for ev in extracted:
        by_instance.setdefault(ev.instance, set()).add(ev.batch_id.split("/")[1])
    assert len(by_instance) == 2, f"one extractor did every partition: {by_instance}"
    rows = chdb.query(data / "chdb", "SELECT count() AS n, uniqExact(id) AS u, min(id) AS lo, max(id) AS hi FROM split")
    assert rows == [{"n": 3000, "u": 3000, "lo": 0, "hi": 2999}]
