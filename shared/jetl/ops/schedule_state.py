"""A schedule's live state in NATS: whether it is paused, the last slot requested, the next runs.

The cron itself is data on the pipeline (jetl.schedule.Cron); the pause flag and the slot marker live in the KV
bucket, so every scheduler replica sees them at once. `jetl schedule`, `pause` and `resume` call these.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jetl.errors import ConfigError
from jetl.state import get_json, get_paused, set_paused, slot_key, update_json

if TYPE_CHECKING:
    from jetl.ops.handle import Handle
    from jetl.pipeline import Pipeline


async def schedule_rows(jc: Handle | None, pipelines: list[Pipeline], n_next: int) -> list[dict[str, Any]]:
    """Per scheduled pipeline: schedule, pause state, last requested slot and the next runs (without a client, NATS
    being away, the pause state is the code's and the last slot unknown)."""

    now = datetime.now(UTC)
    kv = await jc.kv() if jc is not None else None
    rows: list[dict[str, Any]] = []
    for p in pipelines:
        c = p.schedule
        if c is None:
            continue
        override = await get_paused(kv, p.name) if kv is not None else None
        paused = override if override is not None else c.paused
        marker = await get_json(kv, slot_key(p.name)) if kv is not None else None
        ends: list[datetime] = []
        slot = c.prev_at_or_before(now)
        for _ in range(n_next):
            slot = c.next_after(slot)
            ends.append(slot)
        rows.append(
            {
                "pipeline": p.name,
                "cron": c.expression,
                "tz": c.tz,
                "catch_up": c.catch_up,
                "max_active_runs": c.max_active_runs,
                "paused": paused,
                "paused_by": "jetl pause" if override is not None else "code" if c.paused else None,
                "last_slot_end": marker,
                "next_runs": [e.isoformat() for e in ends],
            }
        )
    return rows


async def pause(jc: Handle, name: str) -> None:
    """Stop scheduling a pipeline: every scheduler replica honours the flag at once."""
    await set_paused(await jc.kv(), name, True)


async def resume(jc: Handle, p: Pipeline, *, from_now: bool) -> int:
    """Schedule a paused pipeline again (from now on, skipping the missed slots, with `from_now`); returns how many
    missed slots its catch-up policy will request (counted up to 10,000)."""

    cron = p.schedule
    if cron is None:
        raise ConfigError(f"pipeline {p.name!r} has no schedule")
    kv = await jc.kv()
    current = cron.prev_at_or_before(datetime.now(UTC))
    if from_now:
        await update_json(kv, slot_key(p.name), lambda old: current.isoformat())
    marker = await get_json(kv, slot_key(p.name))
    missed = 0
    if isinstance(marker, str) and cron.catch_up == "all":
        slots = cron.intervals(datetime.fromisoformat(marker), current)
        missed = sum(1 for _ in zip(range(10_000), slots, strict=False))
    await set_paused(kv, p.name, False)
    return missed
