"""The scheduler's router: the run tracker's durable pull consumer on JETL_EVENTS."""

from __future__ import annotations

from typing import Annotated, Any

from faststream import AckPolicy, Context
from faststream.nats import JStream, NatsRouter, PullSub
from faststream.nats.message import NatsBatchMessage

from jetl import subjects
from jetl.bus import raw_decoder
from jetl.service import ServiceContext
from jetl.subjects import Kind
from jetl_scheduler.settings import SchedulerSettings
from jetl_scheduler.tracker import track


def make_router(ctx: ServiceContext) -> NatsRouter:
    """One subscriber: every lifecycle event, folded into run state."""
    settings = ctx.settings if isinstance(ctx.settings, SchedulerSettings) else SchedulerSettings()
    router = NatsRouter()

    @router.subscriber(
        subjects.pattern(Kind.EVENTS),
        stream=JStream(subjects.stream_name(Kind.EVENTS), declare=False),
        durable="tracker",
        pull_sub=PullSub(batch_size=settings.fetch_batch, timeout=settings.fetch_timeout, batch=True),
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_decoder,
    )
    async def on_events(body: list[Any], message: Annotated[NatsBatchMessage, Context("message")]) -> None:
        for raw in message.raw_message:
            await track(ctx, raw)

    return router
