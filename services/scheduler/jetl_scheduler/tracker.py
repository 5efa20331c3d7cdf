"""The run tracker: folds JETL_EVENTS into the state bucket and declares a run complete when it settles.

Completion is derived, never asserted: a run completes when the extractor said how many batches it made and each
of them reached the destination or the DLQ. Only then does the extractor cursor advance, and it advances before
run.completed is published: whoever sees run.completed and asks for the next run gets the new cursor (the other
order let a next run re-extract what the last one loaded). A crash between the two re-derives run.completed when
the event is redelivered; the cursor write is idempotent.
"""

from __future__ import annotations

from typing import Any

from jetl.events import CursorChanged, Event, RunCompleted, RunFailed, RunRequested, parse_event
from jetl.logging import get_logger
from jetl.projection import RunState
from jetl.runtime.service import ServiceContext
from jetl.state import add_active, apply, mark_finished, put_cursor
from jetl_scheduler.alerts import Alerter

log = get_logger("jetl.tracker")


async def record_outcome(ctx: ServiceContext, ev: Event, state: RunState, alerter: Alerter | None = None) -> None:
    """Keep the keys the scheduler and `jetl health` read (unfinished runs, latest success and failure); alert
    through `alerter` (the scheduler app's, made from its settings) when a run fails."""
    assert ctx.kv is not None
    if isinstance(ev, RunRequested) and state.status in ("requested", "running"):
        await add_active(ctx.kv, state.pipeline, state.run_id, ev.at)
    elif isinstance(ev, (RunCompleted, RunFailed)):
        await mark_finished(ctx.kv, state)
        if isinstance(ev, RunFailed) and alerter is not None:
            alerter.run_failed(ctx.kv, state.pipeline, state.run_id, ev.error, ev.stage)


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


async def track(ctx: ServiceContext, raw: Any, alerter: Alerter | None = None) -> None:
    """Fold one event; complete its run when the ledger is settled (alerting through `alerter` on a failure)."""
    if ctx.kv is None:
        await raw.nak(delay=1)
        return
    try:
        ev = parse_event(raw.data)
    except Exception as exc:
        log.error("unreadable event", error=str(exc))
        await raw.term()
        return
    if isinstance(ev, CursorChanged):  # an operator's change, already in the store (jetl.cursors): no run to fold
        await raw.ack()
        return
    try:
        state = await apply(ctx.kv, ev, ttl=ctx.settings.nats.run_state_ttl_days * 86400)
        await record_outcome(ctx, ev, state, alerter)
        if state.settled and state.status not in ("completed", "failed"):
            c = state.counts()
            await put_cursor(ctx.kv, state.pipeline, state.cursor)
            done = completion(ctx, state)
            # The run's state says completed, and it leaves the unfinished index, before anyone hears of it: whoever
            # sees run.completed and asks for the next run finds nothing in its way (the extractor refuses a run
            # that would overlap an unfinished one of a pipeline that keeps a cursor).
            state = await apply(ctx.kv, done, ttl=ctx.settings.nats.run_state_ttl_days * 86400)
            await record_outcome(ctx, done, state, alerter)
            await ctx.bus.event(done)
            log.info(
                "run completed",
                pipeline=state.pipeline,
                run_id=state.run_id,
                cursor_from=state.start_cursor,
                cursor_to=state.cursor,
                **c,
            )
        elif state.settled and state.status == "completed" and not isinstance(ev, RunCompleted):
            # a settling event delivered again: the last delivery may have stopped between folding the completion
            # and announcing it, so announce it (deduplicated by its message id if it went out)
            await ctx.bus.event(completion(ctx, state))
    except Exception as exc:
        log.warning("tracker failed to fold an event; will retry", error=str(exc))
        await raw.nak(delay=0.5)
        return
    await raw.ack()
