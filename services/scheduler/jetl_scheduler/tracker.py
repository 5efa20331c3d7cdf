"""The run tracker: folds JETL_EVENTS into the state bucket and declares a run complete when it settles.

Completion is derived, never asserted: a run completes when the extractor said how many batches it made and each
of them reached the destination or the DLQ, unless the destination refused every record that reached it (none
loaded, some dead-lettered by the loader: `RunState.refused_by_destination`): that run fails, and its cursor stays.
Only on completion does the extractor cursor advance, and it advances before run.completed is published: whoever
sees run.completed and asks for the next run gets the new cursor (the other order let a next run re-extract what
the last one loaded). A crash between the two re-derives run.completed when the event is redelivered; the cursor
write is idempotent. A pipeline whose source forgets what a run read once it is on JETL_RAW (a CDC slot:
`Pipeline.cursor_at_extraction`) moves its cursor when the run is extracted instead, so its runs go on while the
loaders are away.

Events come over the bus, so the tracker trusts each event type only from the roles whose work it reports (the
role token of its subject, which NATS permissions hold each user to: `jetl.events.trusted`); an event from another
role is not folded at all. It trusts a run's state only as far as the log backs it: a run settles only
when the tracker saw it requested and the extractor start it, and the batches it saw agree with the count
`run.extracted` gave; an event of a run never requested is folded (the log is the log) but acts on nothing: no
completion, no cursor, no alert. A cursor only moves forward.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.kv import KeyValue

from jetl.errors import JetlError, TransientError
from jetl.events import (
    Event,
    PartitionExtracted,
    RunCancelled,
    RunCompleted,
    RunExtracted,
    RunFailed,
    RunRequested,
    is_run_event,
    parse_event,
    trusted,
)
from jetl.logging import get_logger
from jetl.positions import order_key
from jetl.projection import RunState
from jetl.registry import get_pipeline
from jetl.runtime.service import ServiceContext
from jetl.runtime.stage import settle
from jetl.state import (
    Ledgers,
    add_active,
    apply_many,
    compact,
    get_cursor,
    get_run,
    mark_finished,
    put_cursor,
    run_key,
)
from jetl.subjects import event_role
from jetl_scheduler.alerts import Alerter

log = get_logger("jetl.tracker")


async def record_outcome(ctx: ServiceContext, ev: Event, state: RunState, alerter: Alerter | None = None) -> None:
    """Keep the keys the scheduler and `jetl health` read (unfinished runs, latest success and failure); alert
    through `alerter` (the scheduler app's, made from its settings) when a run fails."""
    assert ctx.kv is not None
    if isinstance(ev, RunRequested) and state.status in ("requested", "running"):
        await add_active(ctx.kv, state.pipeline, state.run_id, ev.at)
    elif isinstance(ev, (RunCompleted, RunFailed, RunCancelled)):  # cancelled: the overlap guard lets go of it
        await mark_finished(ctx.kv, state)
        # only a failure that stands: not one that came after the run completed (or was cancelled)
        if isinstance(ev, RunFailed) and state.status == "failed" and state.error == ev.error and alerter is not None:
            alerter.run_failed(ctx.kv, state.pipeline, state.run_id, ev.error, ev.stage)


def untrusted(state: RunState) -> str | None:
    """Why the log does not back settling this run (None: it does)."""
    if state.requested_at is None:
        return "the tracker never saw it requested"
    if state.started_at is None and state.expected_batches is not None:
        return "run.extracted came before any extractor started the run"
    if state.expected_batches is not None and len(state.batches) > state.expected_batches:
        return f"run.extracted says {state.expected_batches} batches, but {len(state.batches)} were seen"
    return None


def _cursor_at_extraction(pipeline: str) -> bool:
    """Whether the pipeline's cursor moves when a run is extracted (`Pipeline.cursor_at_extraction`); False for a
    pipeline this scheduler does not know."""
    try:
        return get_pipeline(pipeline).cursor_at_extraction
    except JetlError:
        return False


def _behind(old: Any, new: Any) -> bool:
    """`new` is a cursor position before `old` (each extractor's part compared on its own; positions that do not
    compare, e.g. file lists, never count as behind)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    if "value" not in old or "value" not in new:
        return any(_behind(old[k], new[k]) for k in old.keys() & new.keys())
    if old.get("type") != new.get("type"):
        return False
    try:
        was, now = order_key(old["value"]), order_key(new["value"])
    except TypeError:
        return False
    # text is not judged: a number or a decimal stored as text does not sort as text
    return was[0] == now[0] != "text" and bool(now[1] < was[1])


async def advance_cursor(kv: KeyValue, state: RunState) -> None:
    """Move the pipeline's cursor to the settled run's, only forward (a run cannot take a pipeline back)."""
    if state.cursor is None:
        return
    old = await get_cursor(kv, state.pipeline)
    if old is not None and _behind(old, state.cursor):
        log.warning("cursor not moved back", pipeline=state.pipeline, run_id=state.run_id)
        return
    await put_cursor(kv, state.pipeline, state.cursor)


def verdict(ctx: ServiceContext, state: RunState) -> RunCompleted | RunFailed:
    """What a settled run's end is: run.completed, or run.failed when the destination refused all it was given."""
    refused = state.refused_by_destination()
    if refused is None:
        return completion(ctx, state)
    return RunFailed(
        pipeline=state.pipeline,
        run_id=state.run_id,
        service="scheduler",
        instance=ctx.instance,
        code_hash=state.code_hash,
        error=refused,
        stage="load",
    )


def completion(ctx: ServiceContext, state: RunState) -> RunCompleted:
    """The run.completed event of a settled run."""
    c = state.counts()
    return RunCompleted(
        pipeline=state.pipeline,
        run_id=state.run_id,
        service="scheduler",
        instance=ctx.instance,
        code_hash=state.code_hash,
        extracted=c["extracted"],
        loaded=c["loaded"],
        rejected=c["rejected"],
        filtered=c["filtered"],
        cursor=state.cursor,
    )


async def read_event(raw: Any) -> Event | None:
    """One message's event to fold; None when there is none (the message is settled here): an unreadable one is
    term'ed (no redelivery can mend it), an event from a role that may not say it acked unfolded, an operator's cursor
    change acked (it names no run, and is already in the store, `jetl.ops.cursors`)."""
    try:
        ev = parse_event(raw.data)
    except Exception as exc:
        log.error("unreadable event", error=str(exc))
        await raw.term()
        return None
    said_by = event_role(getattr(raw, "subject", ""))
    if not trusted(ev, said_by):  # e.g. a loader saying run.extracted: on the log, never folded
        log.warning("event from a role that may not say it; not folded", type=ev.type, role=said_by, run_id=ev.run_id)
        await raw.ack()
        return None
    if not is_run_event(ev):  # an operator's cursor change or dashboard action: on the log, no run to fold
        await raw.ack()
        return None
    return ev


DEFER = 256
"""Unsettled batches whose ledgers wait in their run's key (`jetl.state.apply_many`): a batch key is then written
once, when the batch settles, not at each of its events."""


async def _not_folded(exc: BaseException) -> None:
    """What giving up on an event does: it stays in the log, and `jetl status --rebuild` folds it once mended."""
    log.error("event not folded; gave up on it", error=f"{type(exc).__name__}: {exc}")


async def track(
    ctx: ServiceContext, msgs: list[Any], alerter: Alerter | None = None, ledgers: Ledgers | None = None
) -> None:
    """Fold a fetch of events: grouped by run (in log order within each), each run's events in one state write
    (`jetl.state.apply_many`), the runs side by side; complete a run when its ledger is settled (alerting through
    `alerter` on a failure). Each run's messages are settled together by the one ack rule
    (`jetl.runtime.stage.settle`): a write that lost to other writers, or a NATS hiccup, is retried with backoff; a
    bug is logged and term'ed."""
    runs: dict[tuple[str, str], list[tuple[Any, Event]]] = {}
    for raw in msgs:
        ev = await read_event(raw)
        if ev is not None:
            runs.setdefault((ev.pipeline, ev.run_id), []).append((raw, ev))
    await asyncio.gather(*(_track_run(ctx, group, alerter, ledgers) for group in runs.values()))


async def _track_run(
    ctx: ServiceContext, group: list[tuple[Any, Event]], alerter: Alerter | None, ledgers: Ledgers | None
) -> None:
    """Fold one run's events of a fetch and act on the state they leave."""
    events = [ev for _, ev in group]
    async with settle([raw for raw, _ in group], _not_folded):
        if ctx.kv is None:
            raise TransientError("the state bucket is not open yet")
        ttl = ctx.settings.nats.run_state_ttl_days * 86400
        state = await apply_many(ctx.kv, events, ttl=ttl, ledgers=ledgers, defer=DEFER)
        if state.requested_at is None:  # events of a run nobody asked for: on the log, acting on nothing
            log.warning("event of a run never requested; not acted on", type=events[0].type, run_id=state.run_id)
            return
        for ev in events:
            await record_outcome(ctx, ev, state, alerter)
        refused = untrusted(state)
        if (
            refused is None
            and state.expected_batches is not None
            and state.status not in ("completed", "failed")
            and any(isinstance(ev, (RunExtracted, PartitionExtracted)) for ev in events)
            and _cursor_at_extraction(state.pipeline)
        ):  # extracted (every batch on JETL_RAW, the source told): the next run reads on from here
            await advance_cursor(ctx.kv, state)
        if state.settled and refused is not None and state.status not in ("completed", "failed"):
            log.warning("run not settled", pipeline=state.pipeline, run_id=state.run_id, why=refused)
        elif state.settled and state.status not in ("completed", "failed"):
            c = state.counts()
            done = verdict(ctx, state)
            if isinstance(done, RunCompleted) and not _cursor_at_extraction(state.pipeline):
                await advance_cursor(ctx.kv, state)
            # The run's state says completed (or failed), and it leaves the unfinished index, before anyone hears of
            # it: whoever sees the end and asks for the next run finds nothing in its way (the extractor refuses a
            # run that would overlap an unfinished one of a pipeline that keeps a cursor).
            state = await apply_many(ctx.kv, [done], ttl=ttl, ledgers=ledgers)
            await record_outcome(ctx, done, state, alerter)
            await ctx.bus.event(done)
            ended = isinstance(done, RunCompleted)
            (log.info if ended else log.error)(
                "run completed" if ended else "run failed: the destination refused every record",
                pipeline=state.pipeline,
                run_id=state.run_id,
                cursor_from=state.start_cursor,
                cursor_to=state.cursor,
                **c,
            )
        elif state.settled and not any(isinstance(e, (RunCompleted, RunFailed)) for e in events):
            # a settling event delivered again: the last delivery may have stopped between folding the end and
            # announcing it, so announce it (deduplicated by its message id if it went out)
            done = verdict(ctx, state)
            said = "completed" if isinstance(done, RunCompleted) else "failed"
            if state.status == said and (isinstance(done, RunCompleted) or state.error == done.error):
                await ctx.bus.event(done)
        if state.status in ("completed", "failed"):
            if ledgers is not None:
                ledgers.forget(run_key(state.pipeline, state.run_id))
            if not state.summary:
                _in_background(_summarize(ctx.kv, state, ttl))


_TASKS: set[asyncio.Task[None]] = set()
"""Summaries being written (held here so that none is collected half way)."""


def _in_background(work: Any) -> None:
    task = asyncio.create_task(work)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


SUMMARY_DELAY_S = 5.0
"""Seconds after a run finishes before its ledgers are summarized: the fold writes a fetch's batch keys beside its
run-key write, and a summary read before they land would leave those batches out."""


async def _summarize(kv: KeyValue, state: RunState, ttl: float) -> None:
    """Fold a finished run's batch keys into its summary, off the fold's path (a failure leaves the keys, which
    expire with their TTL anyway; the run's next event, or `jetl status --rebuild`, finds them as they were)."""
    try:
        await asyncio.sleep(SUMMARY_DELAY_S)
        fresh = await get_run(kv, state.pipeline, state.run_id)  # as the bucket has it, every ledger write done
        if fresh is None:
            return
        n = await compact(kv, fresh, ttl=ttl)
        if n:
            log.info("batch ledgers summarized", pipeline=state.pipeline, run_id=state.run_id, batches=n)
    except Exception as exc:
        log.warning("batch ledgers not summarized", run_id=state.run_id, error=f"{type(exc).__name__}: {exc}")
