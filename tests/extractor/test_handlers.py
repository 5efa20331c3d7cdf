"""The extractor stage in memory: a run request in, bounded raw batches, DLQ'd malformed lines and events out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import ConsoleLoader, FileExtractor, Pipeline, subjects
from jetl.messages import RunRequest, decode_batch, read_records
from jetl.protocols import Check, Chunk, ExtractContext
from jetl.registry import register
from jetl.runtime.service import make_context
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.testing.memory import capture
from jetl_extractor.handlers import make_router


class Row(BaseModel):
    id: int


async def test_run_request_is_extracted_into_bounded_batches(tmp_path: Path) -> None:
    src = tmp_path / "rows.jsonl"
    lines = [orjson.dumps({"id": i}).decode() for i in range(25)]
    lines[10] = '{"id": '  # malformed, line 11
    src.write_text("\n".join(lines) + "\n")
    register(
        [
            Pipeline(
                name="mem",
                extractors=[FileExtractor(src, chunk_size=7)],
                loader=ConsoleLoader(),
                schema=Row,
                batch_size=10,
            )
        ]
    )
    ctx = make_context("extractor", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    got = capture(ctx.broker, [Kind.RAW, Kind.EVENTS, Kind.DLQ])
    async with TestNatsBroker(ctx.broker) as br:
        req = RunRequest(pipeline="mem", run_id="mem-r1")
        await br.publish(req.model_dump_json().encode(), subjects.run_request("mem"), stream="JETL_RUNS")

    batches = sorted((decode_batch(b) for b in got[Kind.RAW]), key=lambda x: x[0].seq)  # published concurrently
    sizes = [b.count for b, _ in batches]
    assert sizes == [10, 10, 5]  # re-chunked to the pipeline's batch size, whatever the extractor's chunks
    assert [b.batch_id for b, _ in batches] == ["mem-r1/000000", "mem-r1/000001", "mem-r1/000002"]
    # The lines travel unparsed: the malformed one too, for the transformer to reject with its file and line.
    read = [read_records(body, b.count) for b, body in batches]
    assert [r["id"] for records, _, _ in read for r in records] == [i for i in range(25) if i != 10]
    unread = read[1][2]
    assert [(u.position, u.value) for u in unread] == [(0, '{"id":')]
    assert "malformed JSON" in unread[0].reason
    assert batches[1][0].origin(unread[0].position) == f"{src}:11"
    assert batches[2][0].origin(0) == f"{src}:21"

    assert got[Kind.DLQ] == []  # nothing the extractor could not read
    types = [orjson.loads(e)["type"] for e in got[Kind.EVENTS]]
    assert types[0] == "run.started" and types[-1] == "run.extracted"
    done = orjson.loads(got[Kind.EVENTS][-1])
    assert done["batches"] == 3 and done["records"] == 25 and done["rejected"] == 0
    assert done["cursor"]["files"]  # the file is remembered once the run completes


async def test_a_failed_run_names_its_service_and_code(tmp_path: Path) -> None:
    """run.failed carries the pipeline's code hash (what `jetl audit` shows a run ran with) and the service's name."""
    from jetl.errors import ConfigError

    class Refusing:
        async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
            raise ConfigError("source credentials rejected")
            yield Chunk(records=[])

        def next_cursor(self) -> None:
            return None

        def check(self, settings: JetlSettings) -> Check:
            return Check("ok", "configured")

    p = Pipeline(name="refused", extractors=[Refusing()], loader=ConsoleLoader(), schema=Row)
    p.code_hash = "0123456789ab"  # as discovery sets it from the module's text
    register([p])
    ctx = make_context("extractor", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    got = capture(ctx.broker, [Kind.EVENTS])
    async with TestNatsBroker(ctx.broker) as br:
        req = RunRequest(pipeline="refused", run_id="refused-r1")
        await br.publish(req.model_dump_json().encode(), subjects.run_request("refused"), stream="JETL_RUNS")
    failed = [e for e in map(orjson.loads, got[Kind.EVENTS]) if e["type"] == "run.failed"]
    assert len(failed) == 1 and "source credentials rejected" in failed[0]["error"]
    assert failed[0]["service"] == "extractor" and failed[0]["code_hash"] == "0123456789ab"
