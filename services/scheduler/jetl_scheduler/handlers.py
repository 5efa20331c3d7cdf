"""The scheduler's router: the run tracker's durable pull consumer on JETL_EVENTS."""

from __future__ import annotations

from faststream.nats import NatsRouter

from jetl.runtime.service import ServiceContext, stage_subscriber
from jetl_scheduler.alerts import Alerter
from jetl_scheduler.settings import SchedulerSettings
from jetl_scheduler.tracker import track


def make_router(ctx: ServiceContext, alerter: Alerter | None = None) -> NatsRouter:
    """One subscriber: every lifecycle event, folded into run state (a failed run alerts through `alerter`)."""
    settings = ctx.settings if isinstance(ctx.settings, SchedulerSettings) else SchedulerSettings()
    router = NatsRouter()

    stage_subscriber(
        router,
        "tracker",
        lambda raw: track(ctx, raw, alerter),
        fetch_batch=settings.fetch_batch,
        fetch_timeout=settings.fetch_timeout,
    )

    return router
