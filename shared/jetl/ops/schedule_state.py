"""A schedule's live state in NATS: whether it is paused, the last slot requested, the next runs.

The cron itself is data on the pipeline (jetl.schedule.Cron); the pause flag and the slot marker live in the KV
bucket, so every scheduler replica sees them at once. `jetl schedule`, `pause` and `resume` call these.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jetl.bus import nats_connection
from jetl.errors import ConfigError, JetlError
from jetl.pipeline import Pipeline
from jetl.settings import JetlSettings
from jetl.state import bucket, get_json, get_paused, set_paused, slot_key, update_json


async def schedule_rows(s: JetlSettings, pipelines: list[Pipeline], n_next: int) -> tuple[list[dict[str, Any]], str]:
    """Per scheduled pipeline: schedule, pause state, last requested slot and the next runs."""

    now = datetime.now(UTC)
    note = ""
    kv = None
    nc = None
    try:
        nc = await nats_connection(s)
        kv = await bucket(nc)
    except JetlError as exc:
        note = f"{exc}: pause state and last slots unknown"
    rows: list[dict[str, Any]] = []
    try:
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
    finally:
        if nc is not None:
            await nc.close()
    return rows, note


async def pause(s: JetlSettings, name: str) -> None:
    """Stop scheduling a pipeline: every scheduler replica honours the flag at once."""

    nc = await nats_connection(s)
    try:
        await set_paused(await bucket(nc), name, True)
    finally:
        await nc.close()


async def resume(s: JetlSettings, p: Pipeline, *, from_now: bool) -> int:
    """Schedule a paused pipeline again (from now on, skipping the missed slots, with `from_now`); returns how many
    missed slots its catch-up policy will request (counted up to 10,000)."""

    cron = p.schedule
    if cron is None:
        raise ConfigError(f"pipeline {p.name!r} has no schedule")
    nc = await nats_connection(s)
    try:
        kv = await bucket(nc)
        now = datetime.now(UTC)
        current = cron.prev_at_or_before(now)
        if from_now:
            await update_json(kv, slot_key(p.name), lambda old: current.isoformat())
        marker = await get_json(kv, slot_key(p.name))
        missed = 0
        if isinstance(marker, str) and cron.catch_up == "all":
            missed = sum(
                1 for _ in zip(range(10_000), cron.intervals(datetime.fromisoformat(marker), current), strict=False)
            )
        await set_paused(kv, p.name, False)
        return missed
    finally:
        await nc.close()
