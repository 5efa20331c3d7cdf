"""The watchdog against a real nats-server: a silent run fails as stalled, and JetStream's max-deliveries advisory
dead-letters the batch and fails its run naming the batch and the stage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import nats
import orjson
import pytest
from pydantic import BaseModel, ValidationError

from jetl import ConsoleLoader, FileExtractor, Pipeline
from jetl.bus import connect
from jetl.events import BatchExtracted, BatchTransformed, RunExtracted, RunRequested, RunStarted
from jetl.messages.models import Batch
from jetl.ops.client import JetlClient
from jetl.registry import register
from jetl.runtime.service import ServiceContext, make_context
from jetl.settings import JetlSettings, NatsSettings
from jetl.state import add_active, apply, bucket, get_run, heartbeat_key
from jetl.subjects import STREAMS, Kind, stage_durable, stream_name
from jetl.testing.servers import NatsHandle
from jetl.topology import declare
from jetl_scheduler.watchdog import fail_stalled, on_max_deliveries, watch

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Row(BaseModel):
    id: int


@pytest.fixture
async def ctx(nats: NatsHandle) -> AsyncIterator[ServiceContext]:
    settings = JetlSettings(nats=NatsSettings(url=nats.url))
    c = make_context("scheduler", settings)
    await c.broker.connect()
    nc = await connect(settings.nats)
    await declare(nc, settings.nats)
    c.kv = await bucket(nc)
    quiet = Pipeline(name="quiet", extractors=[FileExtractor("/none/*.jsonl")], loader=ConsoleLoader(), schema=Row)
    register([quiet])
    yield c
    await c.broker.stop()
    await nc.close()


async def started(ctx: ServiceContext, run_id: str, last: datetime) -> None:
    assert ctx.kv is not None
    await add_active(ctx.kv, "quiet", run_id, last - timedelta(seconds=1))
    for ev in (
        RunRequested(pipeline="quiet", run_id=run_id, at=last - timedelta(seconds=1)),
        RunStarted(pipeline="quiet", run_id=run_id, at=last - timedelta(seconds=1)),
        BatchExtracted(pipeline="quiet", run_id=run_id, batch_id=f"{run_id}/000000", seq=0, records=3, at=last),
    ):
        await apply(ctx.kv, ev)


async def test_a_run_silent_past_stall_seconds_fails_as_stalled_and_a_busy_one_does_not(ctx: ServiceContext) -> None:
    await started(ctx, "quiet-silent", NOW - timedelta(minutes=20))
    await started(ctx, "quiet-busy", NOW - timedelta(minutes=1))

    failed = await fail_stalled(ctx, stall_seconds=900, now=NOW)

    assert [f.run_id for f in failed] == ["quiet-silent"]
    assert failed[0].stage == "extract" and failed[0].error.startswith("stalled: no progress for 1200s")
    async with JetlClient(ctx.settings) as jc:  # it is on the log, for the tracker to fold (and alert on)
        st = await jc.run_state("quiet", "quiet-silent")
    assert st is not None and st.status == "failed" and "stalled" in (st.error or "")


async def test_a_max_deliveries_advisory_dead_letters_the_batch_and_fails_its_run(ctx: ServiceContext) -> None:
    batch = Batch(pipeline="quiet", run_id="quiet-poison", seq=4, schema_name="Row", schema_hash="h", count=2)
    await ctx.bus.raw_batch(batch, [{"id": 1}, {"id": 2}])
    info = await ctx.broker.connection.jetstream().stream_info(stream_name(Kind.RAW))
    advisory = {
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream": stream_name(Kind.RAW),
        "consumer": "transformer",
        "stream_seq": info.state.last_seq,
        "deliveries": 5,
    }

    failed = await on_max_deliveries(ctx, orjson.dumps(advisory))

    assert failed is not None and failed.stage == "transform"
    assert "quiet-poison/000004" in failed.error and "max_deliver" in failed.error
    async with JetlClient(ctx.settings) as jc:
        letters = [dl for _, dl in await jc.dead_letter_log("quiet")]
        st = await jc.run_state("quiet", "quiet-poison")
    assert [(dl.batch_id, dl.scope, [r["record"] for r in dl.records]) for dl in letters] == [
        ("quiet-poison/000004", "batch", [{"id": 1}, {"id": 2}])
    ]
    assert st is not None and st.status == "failed" and st.batches["quiet-poison/000004"].outcome == "rejected"
    assert ctx.kv is not None and await get_run(ctx.kv, "quiet", "quiet-poison") is None  # the tracker folds, not us


async def test_an_advisory_that_is_not_about_a_stage_is_ignored_and_a_forged_one_refused(ctx: ServiceContext) -> None:
    other = {"stream": stream_name(Kind.EVENTS), "consumer": "tracker", "stream_seq": 1, "deliveries": 5}
    assert await on_max_deliveries(ctx, orjson.dumps(other)) is None
    wrong_stream = {"stream": "ELSEWHERE", "consumer": "loader", "stream_seq": 1, "deliveries": 5}
    assert await on_max_deliveries(ctx, orjson.dumps(wrong_stream)) is None
    with pytest.raises(ValidationError):
        await on_max_deliveries(ctx, b'{"stream": "JETL_RAW"}')


async def test_an_advisory_sent_while_no_scheduler_ran_is_kept_and_fails_its_run_when_one_comes(
    ctx: ServiceContext,
) -> None:
    """JetStream gives up on a raw batch for real (a transformer that never acks, with a short ack wait) while no
    scheduler listens: JETL_ADVISORIES keeps the advisory, and a scheduler's watchdog that comes later pulls it from
    its durable and fails the run naming the batch."""
    nc = ctx.broker.connection
    js = nc.jetstream()
    await declare(nc, NatsSettings(url=ctx.settings.nats.url, ack_wait=0.5))  # the stages' ack wait, shortened
    batch = Batch(pipeline="quiet", run_id="quiet-late", seq=1, schema_name="Row", schema_hash="h", count=1)
    await ctx.bus.raw_batch(batch, [{"id": 7}])
    stuck = await js.pull_subscribe_bind(stage_durable("transformer", "quiet"), stream_name(Kind.RAW))  # its own
    kept = STREAMS[Kind.ADVISORY].name
    for _ in range(60):  # a transformer that takes the batch and dies each time
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            await stuck.fetch(1, timeout=0.5)
        if (await js.stream_info(kept)).state.messages:
            break
    assert (await js.stream_info(kept)).state.messages == 1, "the advisory was not kept"

    late = await js.pull_subscribe_bind("watchdog", kept)  # the scheduler that starts afterwards
    [advisory] = await late.fetch(1, timeout=5)
    await watch(ctx, advisory)

    async with JetlClient(ctx.settings) as jc:
        st = await jc.run_state("quiet", "quiet-late")
        letters = [dl.batch_id for _, dl in await jc.dead_letter_log("quiet")]
    assert st is not None and st.status == "failed" and "quiet-late/000001" in (st.error or "")
    assert letters == ["quiet-late/000001"]
    assert (await js.consumer_info(kept, "watchdog")).num_ack_pending == 0  # acted on once, acked


async def test_no_run_fails_as_stalled_while_a_service_is_paused_on_a_full_stream(ctx: ServiceContext) -> None:
    assert ctx.kv is not None
    await started(ctx, "quiet-waiting", NOW - timedelta(minutes=20))
    beat = {"service": "extractor", "instance": "h:1", "at": time.time(), "paused": "stream JETL_RAW is full (...)"}
    key = heartbeat_key("extractor", "h:1")
    await ctx.kv.put(key, orjson.dumps(beat))

    assert await fail_stalled(ctx, stall_seconds=900, now=NOW) == []  # it waits for room: not stalled

    await ctx.kv.put(key, orjson.dumps({**beat, "paused": None}))  # room came back, yet the run never moved
    assert [f.run_id for f in await fail_stalled(ctx, stall_seconds=900, now=NOW)] == ["quiet-waiting"]


async def test_a_run_waiting_for_a_loader_when_none_is_alive_waits_and_fails_as_stalled_once_one_is(
    ctx: ServiceContext,
) -> None:
    """Its batches are extracted and transformed: they wait in JETL_CLEAN for a loader. With no loader alive the run is
    not stuck, the loader is down (the log buffers the batches, `jetl health` says the loader is missing); with a
    loader alive and still no progress, it is."""
    assert ctx.kv is not None
    run_id, last = "quiet-loading", NOW - timedelta(minutes=20)
    await add_active(ctx.kv, "quiet", run_id, last)
    batch = f"{run_id}/000000"
    for ev in (
        RunRequested(pipeline="quiet", run_id=run_id, at=last),
        RunStarted(pipeline="quiet", run_id=run_id, at=last),
        BatchExtracted(pipeline="quiet", run_id=run_id, batch_id=batch, seq=0, records=3, at=last),
        RunExtracted(pipeline="quiet", run_id=run_id, batches=1, records=3, at=last),
        BatchTransformed(pipeline="quiet", run_id=run_id, batch_id=batch, seq=0, records_in=3, records_out=3, at=last),
    ):
        await apply(ctx.kv, ev)
    transformer = {"service": "transformer", "instance": "h:2", "at": time.time()}
    await ctx.kv.put(heartbeat_key("transformer", "h:2"), orjson.dumps(transformer))

    assert await fail_stalled(ctx, stall_seconds=900, now=NOW) == []  # no loader alive: the run waits for one

    loader = {"service": "loader", "instance": "h:3", "at": time.time()}
    await ctx.kv.put(heartbeat_key("loader", "h:3"), orjson.dumps(loader))
    failed = await fail_stalled(ctx, stall_seconds=900, now=NOW)
    assert [(f.run_id, f.stage) for f in failed] == [(run_id, "load")]
