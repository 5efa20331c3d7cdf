"""What every service shares: the FastStream app, start-up checks, the bus, log shipping and heartbeats.

A service module supplies a name, its settings object and a router factory; `build_app` does the rest:
pipelines are discovered before the broker connects (a broken module stops start-up), streams and consumers are
declared idempotently, and one middleware binds log context around every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from faststream import FastStream
from faststream.nats import NatsBroker, NatsRouter
from nats.js.kv import KeyValue

from jetl import subjects
from jetl.bus import Bus, declare, make_broker, wait_for_nats
from jetl.events import instance_id
from jetl.logging import add_sink, configure_logging, get_logger
from jetl.pipeline import Pipeline
from jetl.registry import discover, get_pipeline_registry
from jetl.settings import JetlSettings

HEARTBEAT_S = 5.0


@dataclass
class ServiceContext:
    """Handed to a service's router factory: its settings, the bus and (once connected) the state bucket."""

    name: str
    settings: JetlSettings
    broker: NatsBroker
    bus: Bus
    kv: KeyValue | None = None
    instance: str = field(default_factory=instance_id)
    started_at: float = field(default_factory=time.time)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        """The registry."""
        return get_pipeline_registry()

    def count(self, key: str, n: int = 1) -> None:
        """Bump a metric counter."""
        self.stats[key] = self.stats.get(key, 0) + n


RouterFactory = Callable[[ServiceContext], NatsRouter]


def make_context(name: str, settings: JetlSettings, broker: NatsBroker | None = None) -> ServiceContext:
    """A service context around a (new) broker."""
    broker = broker or make_broker(settings.nats)
    return ServiceContext(
        name=name,
        settings=settings,
        broker=broker,
        bus=Bus(broker),
        instance=settings.instance or instance_id(),
    )


def build_app(name: str, settings: JetlSettings, router_factory: RouterFactory) -> FastStream:
    """The FastStream app of one service."""
    configure_logging(name, settings.log_level, settings.log_format)
    log = get_logger(f"jetl.{name}")
    discover(settings.pipelines_dir)  # loud: a broken module stops start-up here, naming its file and line
    ctx = make_context(name, settings)
    ctx.broker.include_router(router_factory(ctx))
    app = FastStream(ctx.broker, logger=None)
    tasks: list[asyncio.Task[None]] = []

    @app.on_startup
    async def _prepare() -> None:
        await wait_for_nats(settings.nats)
        from jetl.bus import connect

        nc = await connect(settings.nats)
        try:
            await declare(nc, settings.nats)
        finally:
            await nc.close()

    @app.after_startup
    async def _connected() -> None:
        from jetl.state import bucket

        nc = ctx.broker.connection
        ctx.kv = await bucket(nc)
        if settings.ship_logs:
            add_sink(_log_shipper(nc))
        tasks.append(asyncio.create_task(_heartbeat(ctx)))
        log.info("service started", instance=ctx.instance, pipelines=sorted(ctx.pipelines))

    @app.on_shutdown
    async def _stop() -> None:
        for t in tasks:
            t.cancel()
        log.info("service stopping", instance=ctx.instance)

    app.context.set_global("jetl_service", ctx)
    return app


def _log_shipper(nc: Any) -> Callable[[dict[str, Any]], None]:
    """Publish log lines that carry a run id to JETL_LOGS, fire-and-forget (logging must never block a stage)."""
    loop = asyncio.get_running_loop()

    def ship(event: dict[str, Any]) -> None:
        run_id, pipeline = event.get("run_id"), event.get("pipeline")
        if not run_id or not pipeline or nc.is_closed:
            return
        try:
            data = orjson.dumps(event, default=str)
            subject = subjects.logs(pipeline, run_id)
        except Exception:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lambda: loop.create_task(nc.publish(subject, data)))

    return ship


async def _heartbeat(ctx: ServiceContext) -> None:
    """Tell `jetl health` this instance is alive, with its counters."""
    while True:
        if ctx.kv is not None:
            body = orjson.dumps(
                {
                    "service": ctx.name,
                    "instance": ctx.instance,
                    "at": time.time(),
                    "started_at": ctx.started_at,
                    "stats": ctx.stats,
                }
            )
            key = f"svc.{ctx.name}.{ctx.instance.replace(':', '_').replace('.', '_')}"
            with contextlib.suppress(Exception):
                await ctx.kv.put(key, body)
        await asyncio.sleep(HEARTBEAT_S)
