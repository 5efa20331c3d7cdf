"""Cron: turn each pipeline's due schedule slots into run requests, one per data interval.

A slot's run is requested when its data interval has ended: `0 * * * *` asks at 11:00 for [10:00, 11:00). The end
of the last requested slot is kept in the state bucket (`sched.<pipeline>`), so a restarted scheduler picks up where
the last one stopped, and the catch-up policy decides what happens to slots that ended while none was running:

- `none`:   only the latest slot, and only if it ended less than `catch_up_grace_seconds` ago;
- `latest`: only the latest slot, however late;
- `all`:    every missed slot, oldest first, at most `max_slots_per_tick` per tick.

A pipeline seen for the first time starts from the current slot (no implicit backfill: `jetl backfill` does that).
Paused pipelines request nothing and keep their marker, so resuming applies the catch-up policy to the pause too
(`jetl resume --from-now` skips it). `max_active_runs` defers slots (never drops them) while that many runs of the
pipeline are unfinished.

Two schedulers may run at once: the run id of a slot is deterministic and run requests dedup on it in JetStream's
duplicate window, so each slot still gives exactly one run, with no leader election. The marker only moves forward
(compare-and-set), so a replica with a late clock cannot rewind it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from jetl import metrics
from jetl.logging import get_logger
from jetl.messages.models import RunRequest
from jetl.pipeline import Pipeline
from jetl.runtime.service import ServiceContext
from jetl.schedule import Cron, run_id_for
from jetl.state import (
    add_active,
    get_json,
    get_paused,
    pause_key,
    remove_active,
    slot_key,
    unfinished_runs,
    update_json,
)

__all__ = ["Clock", "due_slots", "is_paused", "make_clock", "pause_key", "read_marker", "slot_key", "tick"]

log = get_logger("jetl.scheduler")

Clock = Callable[[], datetime]


def make_clock(epoch: float = 0.0, speed: float = 1.0) -> Clock:
    """The scheduler's clock: real time, or (for tests) time running `speed` times faster from `epoch`.

    Replicas given the same epoch and speed agree on the time, so a test can run per-minute slots every second.
    """
    if speed == 1.0:
        return lambda: datetime.now(UTC)

    def now() -> datetime:
        real = time.time()
        return datetime.fromtimestamp(epoch + (real - epoch) * speed, UTC)

    return now


def due_slots(
    schedule: Cron,
    marker: datetime,
    now: datetime,
    *,
    grace: timedelta = timedelta(minutes=5),
    limit: int = 100,
) -> tuple[list[tuple[datetime, datetime]], datetime]:
    """The slots to request now, and where the marker moves once they are requested. Pure: no I/O.

    A slot is due when its interval [start, end) has ended (end <= now) and it starts at or after the marker.
    """
    if schedule.catch_up == "all":
        ended = itertools.takewhile(lambda se: se[1] <= now, schedule.intervals(marker, now))
        due = list(itertools.islice(ended, limit))
        return due, (due[-1][1] if due else marker)
    end = schedule.prev_at_or_before(now)  # the latest slot that has ended, ends here
    if end <= marker:
        return [], marker
    start = schedule.prev_at_or_before(end - timedelta(microseconds=1))
    if schedule.catch_up == "none" and now - end > grace:
        return [], end  # too late to run: skip it (and everything before it)
    return [(start, end)], end


async def is_paused(ctx: ServiceContext, p: Pipeline) -> bool:
    """Paused in code (`Cron(paused=True)`) or by `jetl pause` (KV overrides code either way)."""
    assert p.schedule is not None
    if ctx.kv is not None:
        flag = await get_paused(ctx.kv, p.name)
        if flag is not None:
            return flag
    return p.schedule.paused


async def read_marker(ctx: ServiceContext, pipeline: str) -> datetime | None:
    """The end of the last slot requested for a pipeline, if any."""
    if ctx.kv is None:
        return None
    value = await get_json(ctx.kv, slot_key(pipeline))
    return datetime.fromisoformat(value) if isinstance(value, str) else None


async def _advance(ctx: ServiceContext, pipeline: str, to: datetime) -> None:
    """Move the marker forward only (compare-and-set): a replica with an older view cannot rewind it."""
    if ctx.kv is None:
        return

    def forward(old: object) -> object:
        if isinstance(old, str) and datetime.fromisoformat(old) >= to:
            return None
        return to.isoformat()

    await update_json(ctx.kv, slot_key(pipeline), forward)


async def _room(ctx: ServiceContext, p: Pipeline, now: datetime) -> int:
    """How many more runs may start under `max_active_runs` (one at a time for a pipeline that keeps a cursor, whose
    runs must not overlap: `Pipeline.keeps_cursor`), after dropping finished runs from the index."""
    assert p.schedule is not None and ctx.kv is not None
    running, finished = await unfinished_runs(ctx.kv, p.name, now)
    if finished:
        await remove_active(ctx.kv, p.name, finished)
    if p.keeps_cursor:  # one run at a time holds the cursor (until extracted, under `cursor_at_extraction`)
        return max(0, 1 - sum(p.holds_cursor(state) for _, state in running.values()))
    return max(0, p.schedule.max_active_runs - len(running))


async def _tick_pipeline(ctx: ServiceContext, p: Pipeline, now: datetime, grace: timedelta, limit: int) -> list[str]:
    assert p.schedule is not None
    marker = await read_marker(ctx, p.name)
    if marker is None:
        # first sight of this pipeline: start from the current slot (no implicit backfill; use `jetl backfill`)
        await _advance(ctx, p.name, p.schedule.prev_at_or_before(now))
        return []
    due, new_marker = due_slots(p.schedule, marker, now, grace=grace, limit=limit)
    if due and ctx.kv is not None:
        room = await _room(ctx, p, now)
        if room < len(due):
            log.info("slots deferred: max_active_runs reached", pipeline=p.name, deferred=len(due) - room)
            due = due[:room]
            new_marker = due[-1][1] if due else marker
    requested: list[str] = []
    for start, end in due:
        run_id = run_id_for(p.name, start)
        if ctx.kv is not None:  # indexed before it is requested, so a fast run cannot finish before it is counted
            await add_active(ctx.kv, p.name, run_id, now)
        req = RunRequest(
            pipeline=p.name, run_id=run_id, trigger="schedule", data_interval_start=start, data_interval_end=end
        )
        try:
            duplicate = await ctx.bus.request(req, code_hash=p.code_hash, service="scheduler")
        except Exception:
            if ctx.kv is not None:  # not requested after all: it must not hold a max_active_runs place
                await remove_active(ctx.kv, p.name, [run_id])
            raise
        metrics.schedule_request(p.name, duplicate)
        requested.append(run_id)
        if duplicate:
            log.info("slot already requested (by another scheduler)", pipeline=p.name, run_id=run_id)
        else:
            log.info("scheduled run requested", pipeline=p.name, run_id=run_id, interval_start=start.isoformat())
    if new_marker > marker:
        await _advance(ctx, p.name, new_marker)
    return requested


async def tick(
    ctx: ServiceContext,
    now: datetime | None = None,
    *,
    grace: timedelta = timedelta(minutes=5),
    limit: int = 100,
) -> list[str]:
    """Request every due slot of every active scheduled pipeline; returns the run ids requested.

    One pipeline's failure (its KV entry unreadable, NATS refusing a publish) is logged and does not stop the others.
    """
    now = now or datetime.now(UTC)
    requested: list[str] = []
    for p in list(ctx.pipelines.values()):
        if p.schedule is None:
            continue
        try:
            if await is_paused(ctx, p):
                continue
            requested.extend(await _tick_pipeline(ctx, p, now, grace, limit))
        except Exception as exc:
            log.error("scheduling failed for a pipeline", pipeline=p.name, error=f"{type(exc).__name__}: {exc}")
    return requested
