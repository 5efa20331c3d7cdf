"""The scheduler service: cron slots to run requests, and the run tracker (`jetl serve scheduler`)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from faststream import FastStream

from jetl.logging import get_logger
from jetl.runtime.service import ServiceContext, build_app
from jetl_scheduler.alerts import Alerter
from jetl_scheduler.cron import is_paused, make_clock, tick
from jetl_scheduler.handlers import make_router
from jetl_scheduler.settings import SchedulerSettings
from jetl_scheduler.shards import Shards
from jetl_scheduler.tracker import track
from jetl_scheduler.watch import PipelineWatcher
from jetl_scheduler.watchdog import fail_stalled

log = get_logger("jetl.scheduler")


async def _cron_loop(ctx: ServiceContext, settings: SchedulerSettings, alerter: Alerter) -> None:
    watcher = PipelineWatcher(settings.pipelines_dir) if settings.watch_pipelines else None
    clock = make_clock(settings.clock_epoch, settings.clock_speed)
    grace = timedelta(seconds=settings.catch_up_grace_seconds)
    next_stale_check = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            if watcher is not None:
                watcher.poll()  # a new pipeline is scheduled on this very tick
            now = clock()
            await tick(ctx, now, grace=grace, limit=settings.max_slots_per_tick)
            if alerter.enabled and ctx.kv is not None and loop.time() >= next_stale_check:
                next_stale_check = loop.time() + settings.stale_check_seconds
                active = [p for p in ctx.pipelines.values() if p.schedule is not None and not await is_paused(ctx, p)]
                await alerter.check_stale(ctx.kv, active, now)
        except Exception as exc:  # one bad tick must not stop scheduling; it is logged and retried
            log.error("scheduler tick failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(settings.tick_seconds)


async def _watchdog_loop(ctx: ServiceContext, settings: SchedulerSettings) -> None:
    """Fail runs that stalled, every `stall_check_seconds`, whether or not cron scheduling is on."""
    while True:
        await asyncio.sleep(settings.stall_check_seconds)
        try:
            if ctx.kv is not None:
                await fail_stalled(ctx, settings.stall_seconds)
        except Exception as exc:  # one bad check must not stop the watchdog; it is logged and retried
            log.error("stall check failed", error=f"{type(exc).__name__}: {exc}")


def create_app(settings: SchedulerSettings | None = None) -> FastStream:
    """Build the scheduler app."""
    settings = settings or SchedulerSettings()
    alerter = Alerter(settings)  # one per app: the tracker alerts through it, the cron loop too, shutdown drains it
    app = build_app("scheduler", settings, make_router)
    ctx: ServiceContext = app.context.get("jetl_service")
    tasks: list[asyncio.Task[None]] = []
    shards = Shards(
        ctx,
        lambda msgs, ledgers: track(ctx, msgs, alerter, ledgers),
        lease_s=settings.shard_lease_seconds,
        fetch_batch=settings.fetch_batch,
        fetch_wait=settings.idle_wait,
    )

    @app.after_startup
    async def _start_cron() -> None:
        tasks.append(asyncio.create_task(shards.run()))
        if settings.cron_enabled:
            tasks.append(asyncio.create_task(_cron_loop(ctx, settings, alerter)))
        tasks.append(asyncio.create_task(_watchdog_loop(ctx, settings)))

    @app.on_shutdown
    async def _stop_cron() -> None:
        tasks[0].cancel()  # no more balancing: then every shard held is given back
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[0]
        await shards.stop()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await alerter.drain()

    return app
