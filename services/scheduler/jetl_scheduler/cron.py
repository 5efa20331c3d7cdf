"""Cron: turn each pipeline's due schedule slots into run requests, one per data interval.

Two schedulers may run at once: the run id of a slot is deterministic and run requests dedup on it in JetStream's
duplicate window, so each slot still gives exactly one run, with no leader election.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from nats.js.errors import KeyNotFoundError, NotFoundError

from jetl.logging import get_logger
from jetl.messages import RunRequest
from jetl.pipeline import Pipeline
from jetl.schedule import run_id_for
from jetl.service import ServiceContext
from jetl.state import list_runs

log = get_logger("jetl.scheduler")


def slot_key(pipeline: str) -> str:
    """KV key of the last slot a scheduler requested for a pipeline."""
    return f"sched.{pipeline}"


def pause_key(pipeline: str) -> str:
    """KV key set by `jetl pause`."""
    return f"pause.{pipeline}"


async def is_paused(ctx: ServiceContext, p: Pipeline) -> bool:
    """Paused in code (`Cron(paused=True)`) or by `jetl pause` (KV overrides code either way)."""
    assert p.schedule is not None
    if ctx.kv is not None:
        try:
            entry = await ctx.kv.get(pause_key(p.name))
            if entry.value:
                return bool(orjson.loads(entry.value))
        except (KeyNotFoundError, NotFoundError):
            pass
    return p.schedule.paused


async def tick(ctx: ServiceContext, now: datetime | None = None) -> list[str]:
    """Request every due slot of every active scheduled pipeline; returns the run ids requested."""
    now = now or datetime.now(UTC)
    requested: list[str] = []
    for p in list(ctx.pipelines.values()):
        if p.schedule is None or await is_paused(ctx, p):
            continue
        last: datetime | None = None
        if ctx.kv is not None:
            try:
                entry = await ctx.kv.get(slot_key(p.name))
                last = datetime.fromisoformat(entry.value.decode()) if entry.value else None
            except (KeyNotFoundError, NotFoundError):
                last = None
        if last is None:
            # first sight of this pipeline: start from the slot now (no implicit backfill; use `jetl backfill`)
            last = p.schedule.prev_at_or_before(now)
            if ctx.kv is not None:
                await ctx.kv.put(slot_key(p.name), last.isoformat().encode())
            continue
        due = [(s, e) for s, e in p.schedule.intervals(last, now) if e <= now and s >= last]
        if p.schedule.catch_up == "latest":
            due = due[-1:]
        elif p.schedule.catch_up == "none":
            due = [(s, e) for s, e in due[-1:] if now - e < timedelta(minutes=5)]
        if not due:
            continue
        if ctx.kv is not None:
            running = [r for r in await list_runs(ctx.kv, p.name) if r.status in ("requested", "running")]
            room = max(0, p.schedule.max_active_runs - len(running))
            due = due[:room] if room < len(due) else due
        for start, end in due:
            run_id = run_id_for(p.name, start)
            await ctx.bus.request(
                RunRequest(
                    pipeline=p.name,
                    run_id=run_id,
                    trigger="schedule",
                    data_interval_start=start,
                    data_interval_end=end,
                ),
                code_hash=p.code_hash,
                service="scheduler",
            )
            requested.append(run_id)
            log.info("scheduled run requested", pipeline=p.name, run_id=run_id, interval_start=start.isoformat())
        if due and ctx.kv is not None:
            await ctx.kv.put(slot_key(p.name), due[-1][1].isoformat().encode())
    return requested
