"""The scheduler's router: the run tracker's durable pull consumer on JETL_EVENTS, and the watchdog's on
JETL_ADVISORIES."""

from __future__ import annotations

from faststream.nats import NatsRouter

from jetl.runtime.service import ServiceContext, stage_subscriber
from jetl.state import Ledgers
from jetl_scheduler.alerts import Alerter
from jetl_scheduler.settings import SchedulerSettings
from jetl_scheduler.tracker import track
from jetl_scheduler.watchdog import watch


def make_router(ctx: ServiceContext, alerter: Alerter | None = None) -> NatsRouter:
    """Two subscribers: every lifecycle event, folded into run state (a failed run alerts through `alerter`), and
    every max-deliveries advisory, turned into a dead letter and run.failed."""
    settings = ctx.settings if isinstance(ctx.settings, SchedulerSettings) else SchedulerSettings()
    router = NatsRouter()

    ledgers = Ledgers()  # the batch ledgers of the runs this replica folds, so each batch key is read once
    stage_subscriber(
        router,
        "tracker",
        handle_all=lambda msgs: track(ctx, msgs, alerter, ledgers),
        fetch_batch=settings.fetch_batch,
        fetch_timeout=settings.fetch_timeout,
    )
    stage_subscriber(
        router, "watchdog", lambda raw: watch(ctx, raw), fetch_batch=16, fetch_timeout=settings.fetch_timeout
    )

    return router
