"""The transformer stage in memory (FastStream TestNatsBroker): a raw batch in, a clean batch, events and dead
letters out, without a server."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import (
    ColumnTransformer,
    ConsoleLoader,
    FileExtractor,
    LambdaTransformer,
    Pipeline,
    TypeTransformer,
    subjects,
)
from jetl.messages import Batch, decode_batch, encode_batch
from jetl.registry import register
from jetl.service import make_context
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.testing.memory import capture
from jetl_transformer.handlers import make_router


class Raw(BaseModel):
    id: int
    name: str
    at: datetime


class Out(BaseModel):
    id: int
    title: str
    at: datetime


def keep_odd(r: dict[str, Any]) -> dict[str, Any] | None:
    return r if r["id"] % 2 else None


@pytest.fixture
def pipeline(tmp_path: Any) -> Pipeline:
    p = Pipeline(
        name="unit",
        extractors=[FileExtractor(tmp_path / "x.jsonl")],
        transformers=[
            TypeTransformer(Raw),
            LambdaTransformer(keep_odd),
            ColumnTransformer(rename={"name": "title"}),
        ],
        loader=ConsoleLoader(),
        schema=Out,
    )
    register([p])
    return p


async def test_raw_batch_becomes_clean_batch_with_rejects_dead_lettered(pipeline: Pipeline) -> None:
    ctx = make_context("transformer", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    got = capture(ctx.broker, [Kind.CLEAN, Kind.EVENTS, Kind.DLQ])
    captured = {"clean": got[Kind.CLEAN], "events": got[Kind.EVENTS], "dlq": got[Kind.DLQ]}

    records = [{"id": i, "name": f"n{i}", "at": "2026-11-25T00:00:00Z"} for i in range(1, 7)]
    records[1]["at"] = "not a date"  # id 2: rejected with its field
    batch = Batch(
        pipeline="unit",
        run_id="r1",
        seq=0,
        schema_name="Out",
        schema_hash=pipeline.schema_hash,
        count=6,
        origins=[f"in.jsonl:{i}" for i in range(1, 7)],
    )
    async with TestNatsBroker(ctx.broker) as br:
        await br.publish(encode_batch(batch, records), subjects.raw("unit", "r1"), stream="JETL_RAW")

    assert len(captured["clean"]) == 1
    out, body = decode_batch(captured["clean"][0])
    rows = orjson.loads(body)
    assert [r["id"] for r in rows] == [1, 3, 5]
    assert set(rows[0]) == {"id", "title", "at"}
    assert out.batch_id == "r1/000000" and out.count == 3

    dead = [orjson.loads(b) for b in captured["dlq"]]
    assert len(dead) == 1
    rec = dead[0]["records"][0]
    assert (rec["origin"], rec["field"]) == ("in.jsonl:2", "at")
    assert "unit" in dead[0]["reason"] and "in.jsonl:2" in dead[0]["reason"]

    types = [orjson.loads(e)["type"] for e in captured["events"]]
    transformed = [orjson.loads(e) for e in captured["events"] if orjson.loads(e)["type"] == "batch.transformed"]
    assert "batch.rejected" in types
    assert transformed[0]["records_in"] == 6 and transformed[0]["records_out"] == 3
    assert transformed[0]["rejected"] == 1 and transformed[0]["filtered"] == 2
