"""The loader stage in memory: a clean batch in, part file written once, batch.loaded out; a batch under another
schema is dead-lettered whole."""

from __future__ import annotations

from pathlib import Path

import orjson
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import FileExtractor, FileLoader, Pipeline, subjects
from jetl.loaders.batch import supersede
from jetl.messages.models import Batch
from jetl.messages.wire import encode_batch
from jetl.registry import register
from jetl.runtime.service import bind_in_memory, make_context
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.testing.memory import capture
from jetl_loader.handlers import make_router


class Row(BaseModel):
    id: int
    name: str


async def test_clean_batch_is_written_idempotently(tmp_path: Path) -> None:
    p = Pipeline(
        name="ld", extractors=[FileExtractor(tmp_path / "*.jsonl")], loader=FileLoader(tmp_path / "out"), schema=Row
    )
    register([p])
    ctx = make_context("loader", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    bind_in_memory(ctx)  # its per-pipeline consumers, on the in-memory broker
    got = capture(ctx.broker, [Kind.EVENTS, Kind.DLQ])
    good = Batch(
        pipeline="ld", run_id="r1", seq=0, schema_name="Row", schema_hash=p.schema_hash, count=2, version=7 << 24
    )
    drifted = Batch(pipeline="ld", run_id="r1", seq=1, schema_name="Row", schema_hash="other", count=1)
    rows = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    async with TestNatsBroker(ctx.broker) as br:
        for _ in range(2):  # a redelivery writes the same part file again, not a second copy
            await br.publish(encode_batch(good, rows), subjects.clean("ld", "r1"), stream="JETL_CLEAN")
        await br.publish(encode_batch(drifted, rows[:1]), subjects.clean("ld", "r1"), stream="JETL_CLEAN")

    parts = sorted((tmp_path / "out").rglob("*.jsonl"))
    assert [p.name for p in parts] == ["000000.jsonl"]
    # each row is written with its place in the log: the envelope's version, then one up per record
    versioned = [{**r, "_jetl_version": (7 << 24) + i} for i, r in enumerate(rows)]
    assert [orjson.loads(line) for line in parts[0].read_text().splitlines()] == versioned
    events = [orjson.loads(e) for e in got[Kind.EVENTS]]
    assert [e["type"] for e in events] == ["batch.loaded", "batch.loaded", "batch.rejected"]
    assert events[-1]["scope"] == "batch" and "schema" in events[-1]["reason"]
    dead = orjson.loads(got[Kind.DLQ][0])
    assert dead["stage"] == "load" and dead["records"][0]["record"] == rows[0]


async def test_a_batch_in_parts_writes_each_part_once_and_a_replay_removes_its_parent_batch_once(
    tmp_path: Path,
) -> None:
    p = Pipeline(
        name="pt", extractors=[FileExtractor(tmp_path / "*.jsonl")], loader=FileLoader(tmp_path / "out"), schema=Row
    )
    register([p])
    ctx = make_context("loader", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    bind_in_memory(ctx)  # its per-pipeline consumers, on the in-memory broker
    got = capture(ctx.broker, [Kind.EVENTS])
    rows = [[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], [{"id": 3, "name": "c"}]]
    parts = [
        Batch(
            pipeline="pt",
            run_id="r1",
            seq=0,
            schema_name="Row",
            schema_hash=p.schema_hash,
            count=len(r),
            part=k,
            parts=2,
        )
        for k, r in enumerate(rows)
    ]
    async with TestNatsBroker(ctx.broker) as br:
        for _ in range(2):  # each part redelivered: written again to its own file, never a second copy
            for part, r in zip(parts, rows, strict=True):
                await br.publish(encode_batch(part, r), subjects.clean("pt", "r1"), stream="JETL_CLEAN")

    files = sorted((tmp_path / "out").rglob("*.jsonl"))
    assert [f.name for f in files] == ["000000-part0.jsonl", "000000-part1.jsonl"]
    written = [orjson.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "_jetl_version"} for r in written] == rows[0] + rows[1]
    loaded = [orjson.loads(e) for e in got[Kind.EVENTS]]
    assert [(e["batch_id"], e["part"], e["parts"], e["records"]) for e in loaded[:2]] == [
        ("r1/000000", 0, 2, 2),
        ("r1/000000", 1, 2, 1),
    ]
    p.loader.remove_batch("pt", "r1/000000")  # a replay removes the batch: every part of it
    assert not list((tmp_path / "out").rglob("*.jsonl"))

    removed: list[str] = []

    class Recording(FileLoader):
        def remove_batch(self, pipeline: str, batch_id: str) -> None:
            removed.append(batch_id)

    replayed = Pipeline(
        name="pt", extractors=[FileExtractor(tmp_path / "*.jsonl")], loader=Recording(tmp_path / "out"), schema=Row
    )
    for part in parts:
        replay = part.model_copy(update={"run_id": "r2", "supersedes": "r1/000000"})
        supersede(replayed, replay)
    assert removed == ["r1/000000"]  # once for the batch, not once per part
