"""The archiver beside the transformer, in memory: a raw batch that reaches the transformer service is archived once,
byte for byte, and archived runs past their pipeline's retention are removed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import ConsoleLoader, FileExtractor, Pipeline, subjects
from jetl.archive import Archive
from jetl.messages.models import Batch
from jetl.messages.wire import encode_batch
from jetl.registry import register
from jetl.runtime.service import bind_in_memory, make_context
from jetl.settings import ArchiveSettings, JetlSettings
from jetl_transformer import archiver
from jetl_transformer.handlers import make_router


class Row(BaseModel):
    id: int


async def test_a_raw_batch_is_archived_once_and_old_runs_leave_by_retention(tmp_path: Path) -> None:
    register([Pipeline(name="unit", extractors=[FileExtractor(tmp_path / "x")], loader=ConsoleLoader(), schema=Row)])
    settings = JetlSettings(data_dir=tmp_path, archive=ArchiveSettings(keep_days={"unit": 30}))
    archive = Archive.of(settings)
    old = Batch(pipeline="unit", run_id="r0", seq=0, schema_name="Row", schema_hash="h", count=1)
    archive.put("unit", "r0", old.part_id, encode_batch(old, b'{"id": 0}\n'))
    aged = Path(archive.path("unit", "r0", old.part_id))
    os.utime(aged, (os.stat(aged).st_mtime - 40 * 86400,) * 2)

    ctx = make_context("transformer", settings)
    ctx.broker.include_router(make_router(ctx))
    bind_in_memory(ctx)  # its per-pipeline consumers, on the in-memory broker
    batch = Batch(pipeline="unit", run_id="r1", seq=0, schema_name="Row", schema_hash="h", count=2)
    message = encode_batch(batch, b'{"id": 1}\n{"id": 2}\n')
    archiver._pruning.clear()
    async with TestNatsBroker(ctx.broker) as br:
        await br.publish(message, subjects.raw("unit", "r1"), stream="JETL_RAW")
        await br.publish(message, subjects.raw("unit", "r1"), stream="JETL_RAW")  # a redelivery: written once
        await asyncio.gather(*archiver._tasks)

    assert archive.get("unit", "r1", "r1/000000") == message
    assert ctx.stats["batches_archived"] == 1 and ctx.stats["bytes_archived"] == len(message)
    assert archive.batches("unit", "r0") == [] and ctx.stats["archived_runs_removed"] == 1  # 40 days > 30


@pytest.fixture(autouse=True)
def _no_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transformer's warm-up builds every pipeline's validators: not needed here."""
    monkeypatch.setattr("jetl_transformer.handlers.warm_up", lambda: None)
