"""The watchdog: no run stays "running" for ever.

Two ways a run can stop without anyone saying so, each turned into `run.failed` (which the tracker folds, and
alerts on like any failure):

- JetStream gives up on a message: a stage crashed or stalled on it at every one of its `max_deliver` deliveries, so
  no stage ever acked, nak'ed or dead-lettered it. JetStream says so in an advisory
  (`subjects.max_deliveries_advisory`); the watchdog dead-letters the batch whole (by reference when it is large),
  logs batch.rejected, and fails the run naming the batch and the stage, as a stage does itself when a batch reaches
  max_deliver on an error (`jetl.runtime.stage.reject_batch`). Advisories are core NATS, fire and forget:
  JETL_ADVISORIES keeps them, and the watchdog pulls them from its durable there, so one sent while no scheduler ran
  (or while the only one restarted) is acted on when a scheduler comes back.
- Nothing happens: a run with no event for `stall_seconds` fails as stalled. Not while a service says its
  publishing is paused for want of room (a full stream or store, in its heartbeat: `jetl.bus.Bus.paused`): such runs
  wait, and go on by themselves when room returns.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from jetl import subjects
from jetl.errors import TerminalError
from jetl.events import BatchRejected, RunFailed
from jetl.logging import get_logger
from jetl.messages.deadletter import DeadLetter
from jetl.messages.models import RunRequest, utcnow
from jetl.messages.wire import decode_batch
from jetl.projection import RunState
from jetl.runtime.service import ServiceContext
from jetl.runtime.stage import gave_up, settle
from jetl.state import HEARTBEAT_PREFIX, unfinished_runs, watch_values
from jetl.subjects import CONSUMERS, Stage

log = get_logger("jetl.watchdog")

STAGES: dict[str, Stage] = {"extractor": "extract", "transformer": "transform", "loader": "load"}
"""The stage each stage consumer serves (the tracker's own consumer is no stage)."""


class MaxDeliveries(BaseModel):
    """JetStream's `io.nats.jetstream.advisory.v1.max_deliver` advisory: the fields the watchdog reads."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


async def on_max_deliveries(ctx: ServiceContext, data: bytes) -> RunFailed | None:
    """Turn one max-deliveries advisory into run.failed (after dead-lettering the batch); None when the message is
    not a stage's input of jetl's (the advisory is validated like any inbound message)."""
    adv = MaxDeliveries.model_validate_json(data)
    durable = subjects.durable_of(adv.consumer)  # `transformer-<pipeline>` is the transformer's
    stage = STAGES.get(durable) if durable is not None else None
    if durable is None or stage is None or adv.stream != subjects.stream_name(CONSUMERS[durable]):
        log.warning("max deliveries reached outside jetl's stages", stream=adv.stream, consumer=adv.consumer)
        return None
    msg = await ctx.broker.connection.jetstream().get_msg(adv.stream, adv.stream_seq)
    why = f"no {durable} acknowledged it in {adv.deliveries} deliveries (it crashed or stalled on it each time)"
    base: dict[str, Any] = {"service": "scheduler", "instance": ctx.instance}
    if stage == "extract":
        req = RunRequest.model_validate_json(msg.data or b"null")
        failed = RunFailed(
            pipeline=req.pipeline,
            run_id=req.run_id,
            **base,
            error=f"the run request reached max_deliver at stage extract: {why}",
            stage=stage,
        )
        await ctx.bus.event(failed)
    else:
        batch, body = decode_batch(msg.data or b"")
        exc = TerminalError(gave_up(batch.batch_id, stage, why))
        await ctx.bus.dead_letter(DeadLetter.of_batch(batch, body, stage, exc))
        failed = RunFailed(pipeline=batch.pipeline, run_id=batch.run_id, **base, error=str(exc), stage=stage)
        await ctx.bus.event(failed)  # before the batch settles, as `reject_batch` does: the run must not complete
        await ctx.bus.event(
            BatchRejected(
                **ctx.batch_event_fields(batch),
                stage=stage,
                records=batch.count,
                reason=str(exc),
                scope="batch",
            )
        )
    log.error("reached max_deliver; run failed", pipeline=failed.pipeline, run_id=failed.run_id, error=failed.error)
    return failed


async def watch(ctx: ServiceContext, raw: Any) -> None:
    """Act on one advisory from the watchdog's durable (scheduler replicas share it, so one acts on each), and decide
    its ack by the error taxonomy: a NATS hiccup is tried again; what cannot be acted on is logged and dropped (its
    run, if any, then fails as stalled)."""

    async def give_up(exc: BaseException) -> None:
        log.error("max-deliveries advisory not handled", error=f"{type(exc).__name__}: {exc}")

    async with settle(raw, give_up):
        await on_max_deliveries(ctx, raw.data)


def stalled_stage(state: RunState) -> Stage:
    """Where a silent run is stuck: extraction unfinished, else the first stage some batch has not passed."""
    if state.expected_batches is None:
        return "extract"
    if state.tally.batches < state.expected_batches:  # a batch announced but never seen past extraction
        return "transform"
    pending = [b for b in state.batches.values() if b.outcome == "pending"]  # when its batch ledgers are loaded
    if any(b.extracted and not b.transformed for b in pending):
        return "transform"
    return "load"


PAUSE_FRESH_S = 30.0
"""A heartbeat saying "paused" counts this long (heartbeats come every 5 s; a dead instance's last one lingers)."""


async def fresh_beats(kv: Any) -> list[dict[str, Any]]:
    """The services' heartbeats of the last `PAUSE_FRESH_S` seconds."""
    now = time.time()
    beats = [orjson.loads(raw) for raw in (await watch_values(kv, f"{HEARTBEAT_PREFIX}.>")).values()]
    return [b for b in beats if isinstance(b, dict) and now - float(b.get("at", 0)) <= PAUSE_FRESH_S]


def paused_for_room(beats: list[dict[str, Any]]) -> list[str]:
    """Why services say their publishing is paused right now (a full stream or store), from fresh heartbeats."""
    return sorted({f"{b.get('service')}: {b['paused']}" for b in beats if b.get("paused")})


WAITS_ON: dict[Stage, str] = {"transform": "transformer", "load": "loader"}
"""The service a run stuck at a stage after extraction waits for: with none alive, its batches wait in their stream
(the log buffers them) and go on when one comes; the run is not stalled, the service is down (`jetl health`)."""


async def fail_stalled(ctx: ServiceContext, stall_seconds: float, now: datetime | None = None) -> list[RunFailed]:
    """Fail every started, unfinished run whose newest event is older than `stall_seconds`; none while a service is
    paused for want of room (its runs wait for room, they are not stuck), nor one whose batches wait for a stage
    with no live service (`WAITS_ON`)."""
    assert ctx.kv is not None
    now = now or utcnow()
    beats = await fresh_beats(ctx.kv)
    paused = paused_for_room(beats)
    if paused:
        log.warning("stall check skipped: publishing is paused for room", paused=paused)
        return []
    alive = {b.get("service") for b in beats}
    failed: list[RunFailed] = []
    for pipeline in sorted(ctx.pipelines):
        running, _ = await unfinished_runs(ctx.kv, pipeline, now)
        for run_id, (_, state) in running.items():
            if state is None or state.status != "running":
                continue  # requested, not started: it may be queued behind other runs
            last = state.last_event_at or state.started_at
            idle = (now - last).total_seconds() if last is not None else 0.0
            if idle <= stall_seconds:
                continue
            stage = stalled_stage(state)
            if stage in WAITS_ON and WAITS_ON[stage] not in alive:
                log.warning("run waits: no live service for its stage", pipeline=pipeline, run_id=run_id, stage=stage)
                continue
            settled = sum(1 for b in state.batches.values() if b.outcome != "pending")
            of = state.expected_batches if state.expected_batches is not None else "?"
            ev = RunFailed(
                pipeline=pipeline,
                run_id=run_id,
                service="scheduler",
                instance=ctx.instance,
                code_hash=state.code_hash,
                error=(
                    f"stalled: no progress for {idle:.0f}s (stall_seconds {stall_seconds:g}) at stage {stage}; "
                    f"{settled} of {of} batches settled, last event at {last:%Y-%m-%d %H:%M:%S}"
                ),
                stage=stage,
            )
            await ctx.bus.event(ev)
            log.error("run stalled; failed", pipeline=pipeline, run_id=run_id, error=ev.error)
            failed.append(ev)
    return failed
