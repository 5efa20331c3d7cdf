"""The extractor stage in memory: a run request in, bounded raw batches, DLQ'd malformed lines and events out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from faststream.nats import JStream, TestNatsBroker
from pydantic import BaseModel, ValidationError

from jetl import BearerAuth, ConsoleLoader, FileExtractor, HttpExtractor, Pipeline, subjects
from jetl.messages.models import RunRequest
from jetl.messages.wire import decode_batch, read_records
from jetl.protocols import Check, Chunk, ExtractContext
from jetl.registry import register
from jetl.runtime.service import make_context
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.testing.memory import capture
from jetl_extractor.handlers import RunSlots, make_router
from jetl_extractor.settings import ExtractorSettings


class Row(BaseModel):
    id: int


async def extract(pipeline: str, kinds: list[Kind]) -> dict[Kind, list[bytes]]:
    """One run of `pipeline` through the extractor stage in memory, to its end: what it published, by kind."""
    ctx = make_context("extractor", JetlSettings())
    slots = RunSlots(1, ack_wait=10)
    ctx.broker.include_router(make_router(ctx, slots))
    got = capture(ctx.broker, kinds)
    async with TestNatsBroker(ctx.broker) as br:
        req = RunRequest(pipeline=pipeline, run_id=f"{pipeline}-r1")
        await br.publish(req.model_dump_json().encode(), subjects.run_request(pipeline), stream="JETL_RUNS")
        await slots.idle()
    return got


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
    got = await extract("mem", [Kind.RAW, Kind.EVENTS, Kind.DLQ])

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


async def test_a_slow_api_does_not_hold_other_pipelines_runs(tmp_path: Path) -> None:
    """The API of `slow` does not answer until the end; `fast`'s run, requested after it, is extracted meanwhile."""
    answer = asyncio.Event()

    async def api(request: httpx.Request) -> httpx.Response:
        await answer.wait()
        return httpx.Response(200, json=[{"id": 1}])

    src = tmp_path / "rows.jsonl"
    src.write_text('{"id": 1}\n{"id": 2}\n')
    register(
        [
            Pipeline(
                name="slow",
                extractors=[HttpExtractor("http://api.test/rows", transport=httpx.MockTransport(api))],
                loader=ConsoleLoader(),
                schema=Row,
            ),
            Pipeline(name="fast", extractors=[FileExtractor(src)], loader=ConsoleLoader(), schema=Row),
        ]
    )
    ctx = make_context("extractor", ExtractorSettings())
    slots = RunSlots(ExtractorSettings().concurrent_runs, ack_wait=10)
    ctx.broker.include_router(make_router(ctx, slots))
    extracted = {"slow": asyncio.Event(), "fast": asyncio.Event()}

    @ctx.broker.subscriber(
        subjects.pattern(Kind.EVENTS), stream=JStream(subjects.stream_name(Kind.EVENTS), declare=False)
    )
    async def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "run.extracted":
            extracted[event["pipeline"]].set()

    async with TestNatsBroker(ctx.broker) as br:
        publishing = []  # each publish returns once its handler does: never, if a run held the extractor
        for name in ("slow", "fast"):
            body = RunRequest(pipeline=name, run_id=f"{name}-r1").model_dump_json().encode()
            publishing.append(asyncio.create_task(br.publish(body, subjects.run_request(name), stream="JETL_RUNS")))
        await asyncio.wait_for(extracted["fast"].wait(), 60)
        assert not extracted["slow"].is_set()  # still waiting on its API
        answer.set()
        await asyncio.wait_for(extracted["slow"].wait(), 60)
        await slots.idle()
        await asyncio.gather(*publishing)


def test_the_run_concurrency_is_one_setting() -> None:
    assert ExtractorSettings().concurrent_runs == 4
    assert ExtractorSettings(concurrent_runs=1).concurrent_runs == 1
    with pytest.raises(ValidationError):
        ExtractorSettings(concurrent_runs=0)


async def test_a_token_an_api_echoes_never_reaches_the_run_failed_event(capsys: pytest.CaptureFixture[str]) -> None:
    token = "tk-echoed-0123456789"

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"invalid credentials: {request.headers['Authorization']}")

    extractor = HttpExtractor("http://api.test/rows", auth=BearerAuth(token), transport=httpx.MockTransport(api))
    register([Pipeline(name="echo", extractors=[extractor], loader=ConsoleLoader(), schema=Row)])
    got = await extract("echo", [Kind.EVENTS])
    failed = [orjson.loads(e) for e in got[Kind.EVENTS] if orjson.loads(e)["type"] == "run.failed"]
    assert len(failed) == 1
    assert "HTTP 401" in failed[0]["error"] and "invalid credentials: ***" in failed[0]["error"]
    assert token not in b"".join(got[Kind.EVENTS]).decode()
    logged = capsys.readouterr()
    assert "gave up on the message" in logged.out + logged.err
    assert token not in logged.out + logged.err  # nor in the service's log lines


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
    got = await extract("refused", [Kind.EVENTS])
    failed = [e for e in map(orjson.loads, got[Kind.EVENTS]) if e["type"] == "run.failed"]
    assert len(failed) == 1 and "source credentials rejected" in failed[0]["error"]
    assert failed[0]["service"] == "extractor" and failed[0]["code_hash"] == "0123456789ab"


class LogReader:
    """A log-reading extractor (as PostgresCDCExtractor): versioned chunks, and a confirm that records what was
    already on the bus when it was called."""

    def __init__(self, published: dict[Kind, list[bytes]] | None = None) -> None:
        self.published = published
        self.confirmed: list[tuple[int, list[str]]] = []

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        yield Chunk([{"id": i} for i in range(12)], version=1000)
        yield Chunk([{"id": i} for i in range(12, 20)], version=5000)

    def next_cursor(self) -> dict[str, Any] | None:
        return {"lsn": "0/1"}

    def check(self, settings: JetlSettings) -> Check:
        return Check("ok", "fake")

    async def confirm(self, ctx: ExtractContext) -> None:
        assert self.published is not None
        events = [orjson.loads(e)["type"] for e in self.published[Kind.EVENTS]]
        self.confirmed.append((len(self.published[Kind.RAW]), events))

    async def release(self, ctx: ExtractContext) -> None:
        raise AssertionError("a whole run that extracted is confirmed, never released")


async def test_a_log_source_is_confirmed_once_every_batch_is_acknowledged_and_before_run_extracted() -> None:
    reader = LogReader()
    register([Pipeline(name="log", extractors=[reader], loader=ConsoleLoader(), schema=Row, batch_size=8)])
    ctx = make_context("extractor", JetlSettings())
    slots = RunSlots(1, ack_wait=10)
    ctx.broker.include_router(make_router(ctx, slots))
    reader.published = capture(ctx.broker, [Kind.RAW, Kind.EVENTS])
    async with TestNatsBroker(ctx.broker) as br:
        req = RunRequest(pipeline="log", run_id="log-r1")
        await br.publish(req.model_dump_json().encode(), subjects.run_request("log"), stream="JETL_RUNS")
        await slots.idle()
    [(batches, events)] = reader.confirmed
    assert batches == 3 and events.count("batch.extracted") == 3 and "run.extracted" not in events
    raw = sorted((decode_batch(b)[0] for b in reader.published[Kind.RAW]), key=lambda b: b.seq)
    # the chunks' versions travel in the batches, numbered on across the cut: 1000.., then 1008.., then 5004..
    assert [(b.count, b.version) for b in raw] == [(8, 1000), (8, 1008), (4, 5004)]
