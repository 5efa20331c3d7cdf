"""The scheduler service: cron slots to run requests, and the run tracker (`jetl serve scheduler`)."""

from __future__ import annotations

import asyncio
import contextlib

from faststream import FastStream

from jetl.logging import get_logger
from jetl.service import ServiceContext, build_app
from jetl_scheduler.cron import tick
from jetl_scheduler.handlers import make_router
from jetl_scheduler.settings import SchedulerSettings
from jetl_scheduler.watch import PipelineWatcher

log = get_logger("jetl.scheduler")


async def _cron_loop(ctx: ServiceContext, settings: SchedulerSettings) -> None:
    watcher = PipelineWatcher(settings.pipelines_dir) if settings.watch_pipelines else None
    while True:
        if watcher is not None:
            watcher.poll()
        try:
            await tick(ctx)
        except Exception as exc:  # one bad tick must not stop scheduling; it is logged and retried
            log.error("scheduler tick failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(settings.tick_seconds)


def create_app(settings: SchedulerSettings | None = None) -> FastStream:
    """Build the scheduler app."""
    settings = settings or SchedulerSettings()
    app = build_app("scheduler", settings, make_router)
    ctx: ServiceContext = app.context.get("jetl_service")
    tasks: list[asyncio.Task[None]] = []

    @app.after_startup
    async def _start_cron() -> None:
        if settings.cron_enabled:
            tasks.append(asyncio.create_task(_cron_loop(ctx, settings)))

    @app.on_shutdown
    async def _stop_cron() -> None:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    return app
