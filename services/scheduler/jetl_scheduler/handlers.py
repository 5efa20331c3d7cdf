"""The scheduler's router: the watchdog's durable pull consumer on JETL_ADVISORIES. The run tracker's consumers, one
per shard of JETL_EVENTS, are pulled by `jetl_scheduler.shards` (only the shards this replica holds)."""

from __future__ import annotations

from faststream.nats import NatsRouter

from jetl.runtime.service import ServiceContext, stage_subscriber
from jetl_scheduler.settings import SchedulerSettings
from jetl_scheduler.watchdog import watch


def make_router(ctx: ServiceContext) -> NatsRouter:
    """One subscriber: every max-deliveries advisory, turned into a dead letter and run.failed."""
    settings = ctx.settings if isinstance(ctx.settings, SchedulerSettings) else SchedulerSettings()
    router = NatsRouter()
    stage_subscriber(
        router, "watchdog", lambda raw: watch(ctx, raw), fetch_batch=16, fetch_timeout=settings.fetch_timeout
    )
    return router
