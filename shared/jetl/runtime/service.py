"""What every service shares: the FastStream app, start-up checks, the bus, log shipping and heartbeats.

A service module supplies a name, its settings object and a router factory; `build_app` does the rest:
pipelines are discovered before the broker connects (a broken module is logged and skipped, as at a reload, and
reported in the heartbeat that `jetl health` reads; the rest run), the service waits until the deployment (streams,
consumers, state bucket) exists (it never declares it: its NATS user may not, and `jetl deploy` or `jetl up` does),
and one middleware binds log context around every message.

While it runs, every service also: polls the pipelines folder and loads new or changed modules (a broken one is
logged and skipped), writes a heartbeat with its counters and consumer lag, answers `jetl health` on its control
subject (`jetl.ctl.<service>.health`, with the checks the service registered), and, with `JETL_METRICS_PORT`, serves
Prometheus metrics (see jetl.metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from faststream import AckPolicy, Context, FastStream
from faststream.nats import JStream, NatsBroker, NatsRouter, PullSub
from faststream.nats.message import NatsBatchMessage
from nats.js.kv import KeyValue

from jetl import metrics, subjects
from jetl.bus import Bus, connect, make_broker, raw_decoder, wait_for_nats
from jetl.events import instance_id
from jetl.logging import add_sink, configure_logging, get_logger, remove_sink
from jetl.messages.models import Batch
from jetl.pipeline import Pipeline
from jetl.registry import discover, get_pipeline_registry, reload_changed, reload_errors
from jetl.settings import JetlSettings
from jetl.state import bucket, heartbeat_key, put_expiring
from jetl.subjects import CONSUMERS, STREAMS
from jetl.topology import ACK_WAIT_S, wait_for_deployment

HEARTBEAT_S = 5.0

HealthCheck = Callable[[], Awaitable[str]]
"""A service's own health check for `jetl health`: returns a detail line, raises when unhealthy."""


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
    health_checks: dict[str, HealthCheck] = field(default_factory=dict)
    """Checks this service answers `jetl health` with (the loader's: destination reachable)."""
    pipeline_stages: list[PipelineStage] = field(default_factory=list)
    """Its per-pipeline durables (`subjects.PER_PIPELINE`), bound for each pipeline once deployed (`bind_pipelines`)."""
    bound: set[str] = field(default_factory=set)
    """The per-pipeline consumers this instance pulls from (the scheduler's: the tracker shards it holds)."""
    unbound: dict[str, str] = field(default_factory=dict)
    """Pipeline -> the consumer it lacks (not deployed yet: `jetl deploy`): its batches wait, reported in health."""

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        """The registry."""
        return get_pipeline_registry()

    @property
    def consumer(self) -> str | None:
        """The durable consumer this service binds to, if any (the scheduler pulls the tracker shards it holds, which
        it keeps in `bound`)."""
        return self.name if self.name in CONSUMERS else None

    def event_fields(self, pipeline: str, run_id: str, code_hash: str = "") -> dict[str, Any]:
        """The fields every lifecycle event this service emits for a run carries."""
        return {
            "pipeline": pipeline,
            "run_id": run_id,
            "service": self.name,
            "instance": self.instance,
            "code_hash": code_hash,
        }

    def batch_event_fields(self, batch: Batch, code_hash: str = "") -> dict[str, Any]:
        """`event_fields` for an event about one batch (its id and sequence too, and which part of it a message of a
        batch in parts carries)."""
        return {
            **self.event_fields(batch.pipeline, batch.run_id, code_hash),
            "batch_id": batch.batch_id,
            "seq": batch.seq,
            "part": batch.part,
            "parts": batch.parts,
        }

    def count(self, key: str, n: int = 1) -> None:
        """Bump a metric counter (in the heartbeat, and as `jetl_<key>_total` when metrics are on)."""
        self.stats[key] = self.stats.get(key, 0) + n
        metrics.count(key, n)


RouterFactory = Callable[[ServiceContext], NatsRouter]


@contextlib.asynccontextmanager
async def keep_alive(msgs: Sequence[Any], ack_wait: float, settled: Callable[[], int]) -> AsyncIterator[None]:
    """While the body runs, tell JetStream that every message of `msgs` not yet settled is still being worked on.

    A beat (`in_progress()`) goes out every third of the ack wait, so the ack wait can be short (a crashed worker's
    messages come back within it) while a long batch held by a live worker is never redelivered. `settled()` says
    how many of `msgs`, from the front, are done: the rest, waiting their turn in a fetched batch, are beaten too.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(max(0.5, ack_wait / 3))
            for msg in msgs[settled() :]:
                if getattr(msg, "is_acked", False):  # settled (a nak'ed one too): a beat would push its retry back
                    continue
                with contextlib.suppress(Exception):  # a lost beat costs one redelivery, never the work in hand
                    await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True)
class PipelineStage:
    """A per-pipeline durable's handler, bound to each pipeline's consumer as it appears (`bind_pipelines`)."""

    durable: str
    handle: Callable[[Any], Awaitable[None]]
    fetch_batch: int
    fetch_timeout: float


def stage_subscriber(
    router: NatsRouter,
    durable: str,
    handle: Callable[[Any], Awaitable[None]] | None = None,
    *,
    fetch_batch: int,
    fetch_timeout: float,
    handle_all: Callable[[list[Any]], Awaitable[None]] | None = None,
    ctx: ServiceContext | None = None,
) -> None:
    """Bind `handle` to the durable pull consumer `durable` (see `jetl.subjects.CONSUMERS`), in batch mode.

    Every replica of a service binds the same durable and so shares its work. A per-pipeline durable
    (`subjects.PER_PIPELINE`) is bound once per pipeline instead, when its consumer exists (`bind_pipelines`, with
    `ctx`): each pipeline's pull loop takes its turn on the event loop, so one pipeline's backlog never holds
    another's batches back. The ack policy is MANUAL: `handle`
    gets one raw JetStream message at a time (or `handle_all` every message of a fetch at once: the tracker folds
    them together) and decides its ack itself (`jetl.runtime.stage.settle`), so the error
    taxonomy, not FastStream's reject-on-error default, decides ack, nak or dead-letter. Bodies stay bytes.
    While a fetched batch is being handled, its unsettled messages get `in_progress()` beats well inside
    `ack_wait` (`keep_alive`, above): only a dead worker's messages wait out the ack wait.
    """
    if (handle is None) == (handle_all is None):
        raise ValueError("stage_subscriber takes one of handle and handle_all")
    if durable in subjects.PER_PIPELINE:
        if ctx is None or handle is None:
            raise ValueError(f"the per-pipeline durable {durable!r} takes ctx and handle")
        ctx.pipeline_stages.append(PipelineStage(durable, handle, fetch_batch, fetch_timeout))
        return
    _subscribe(
        router, durable, None, handle, fetch_batch=fetch_batch, fetch_timeout=fetch_timeout, handle_all=handle_all
    )


def _subscribe(
    registrar: NatsRouter | NatsBroker,
    durable: str,
    pipeline: str | None,
    handle: Callable[[Any], Awaitable[None]] | None,
    *,
    fetch_batch: int,
    fetch_timeout: float,
    handle_all: Callable[[list[Any]], Awaitable[None]] | None = None,
    **options: Any,
) -> Any:
    """The pull subscriber of `durable` (of `pipeline`'s consumer when per-pipeline) on a router or the broker."""
    kind = CONSUMERS[durable]
    name = subjects.stage_durable(durable, pipeline) if pipeline is not None else durable

    subscriber: Any = registrar.subscriber(
        subjects.pattern(kind, pipeline),
        stream=JStream(subjects.stream_name(kind), declare=False),
        durable=name,
        # FastStream's default is `_INBOX.`, whatever the connection's: pulls must come back on the role's own inboxes
        inbox_prefix=f"{subjects.inbox_prefix(subjects.DURABLE_ROLE[durable])}.".encode(),
        pull_sub=PullSub(batch_size=fetch_batch, timeout=fetch_timeout, batch=True),
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_decoder,
        title=f"{name}:{kind.value}",
        **options,
    )

    async def consume(
        body: list[Any],
        message: Annotated[NatsBatchMessage, Context("message")],
        service: Annotated[ServiceContext | None, Context("jetl_service", default=None)],
    ) -> None:
        msgs = list(message.raw_message)
        ack_wait = service.settings.nats.ack_wait if service is not None else ACK_WAIT_S
        done = 0
        async with keep_alive(msgs, ack_wait, lambda: done):
            if handle_all is not None:
                await handle_all(msgs)
                return
            assert handle is not None
            for raw in msgs:
                await handle(raw)
                done += 1

    subscriber(consume)
    return subscriber


def _bind(ctx: ServiceContext, stage: PipelineStage, pipeline: str, **options: Any) -> Any:
    """Subscribe `stage` to `pipeline`'s consumer on the broker (its subscriber)."""
    sub = _subscribe(
        ctx.broker,
        stage.durable,
        pipeline,
        stage.handle,
        fetch_batch=stage.fetch_batch,
        fetch_timeout=stage.fetch_timeout,
        **options,
    )
    ctx.bound.add(subjects.stage_durable(stage.durable, pipeline))
    return sub


def bind_in_memory(ctx: ServiceContext) -> None:
    """Subscribe every registered pipeline's per-pipeline durables on the broker before it starts, without asking a
    server whether they exist: for an in-memory test broker (`faststream.nats.TestNatsBroker`), which has none."""
    for stage in ctx.pipeline_stages:
        for pipeline in sorted(ctx.pipelines):
            _bind(ctx, stage, pipeline)


async def bind_pipelines(ctx: ServiceContext) -> None:
    """Start pulling from the per-pipeline consumer of every registered pipeline that has one and is not bound yet;
    note the pipelines whose consumer is not deployed yet (`ctx.unbound`, in the heartbeat and `jetl health`; the
    extractor refuses their runs until the next `jetl deploy`). Services may not create consumers (`jetl.access`);
    only the operator's deploy does."""
    js = ctx.broker.connection.jetstream()
    missing: dict[str, str] = {}
    for stage in ctx.pipeline_stages:
        stream = STREAMS[CONSUMERS[stage.durable]].name
        for pipeline in sorted(ctx.pipelines):
            name = subjects.stage_durable(stage.durable, pipeline)
            if name in ctx.bound:
                continue
            try:
                await js.consumer_info(stream, name)
            except Exception:  # not deployed yet (or the server is away): asked again at the next heartbeat
                missing[pipeline] = f"{stream}/{name}"
                continue
            try:
                await _bind(ctx, stage, pipeline, persistent=False).start()
            except BaseException:
                ctx.bound.discard(name)  # tried again at the next heartbeat
                raise
    if missing.keys() - ctx.unbound.keys():
        get_logger(f"jetl.{ctx.name}").warning(
            "pipelines without their consumer wait (run `jetl deploy`)", consumers=sorted(missing.values())
        )
    ctx.unbound = missing


SERVICE_RECONNECT: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 2}
"""How a service's connection rides out a server that is away: it tries again every 2 s for as long as it takes (a
negative count is nats-py's "for ever"). Its default gives up after 60 tries, and a service whose connection has
closed for good spun its pull loops at 20-50% CPU until it was SIGKILLed; a server `jetl up` restarts after a crash
is back in seconds, one restarted by hand in minutes."""


def make_context(name: str, settings: JetlSettings, broker: NatsBroker | None = None) -> ServiceContext:
    """A service context around a (new) broker."""
    broker = broker or make_broker(settings.nats, **SERVICE_RECONNECT)
    return ServiceContext(
        name=name,
        settings=settings,
        broker=broker,
        bus=Bus(broker, subjects.role(name), full_wait=settings.nats.full_wait),
        instance=settings.instance or instance_id(),
    )


def build_app(name: str, settings: JetlSettings, router_factory: RouterFactory) -> FastStream:
    """The FastStream app of one service."""
    configure_logging(name, settings.log_level, settings.log_format)
    log = get_logger(f"jetl.{name}")
    discover(settings.pipelines_dir, skip_broken=True)  # a broken module: logged with file and line, skipped
    broker = None
    if settings.metrics_port:
        broker = make_broker(settings.nats, middlewares=[metrics.middleware(name)], **SERVICE_RECONNECT)
    ctx = make_context(name, settings, broker)
    ctx.broker.include_router(router_factory(ctx))
    app = FastStream(ctx.broker, logger=None)
    tasks: list[asyncio.Task[None]] = []
    control: list[Any] = []
    sinks: list[Callable[[dict[str, Any]], None]] = []  # this app's log shipper: removed when it stops

    @app.on_startup
    async def _prepare() -> None:
        if settings.metrics_port:
            port = metrics.enable(name, settings.metrics_port, settings.metrics_host)
            log.info("metrics served", url=f"http://{settings.metrics_host}:{port}/metrics")
        await wait_for_nats(settings.nats)
        nc = await connect(settings.nats)
        try:
            await wait_for_deployment(nc, settings.nats.url, settings.nats.deployment_wait)
        finally:
            await nc.close()

    @app.after_startup
    async def _connected() -> None:
        nc = ctx.broker.connection
        ctx.kv = await bucket(nc)
        if settings.ship_logs:
            shipper = LogShipper(nc, dropped=lambda n: ctx.count("log_lines_dropped", n))
            tasks.append(shipper.start())
            sinks.append(shipper.offer)
            add_sink(sinks[-1])
        tasks.append(asyncio.create_task(_heartbeat(ctx)))
        if settings.watch_pipelines and settings.watch_seconds > 0:
            tasks.append(asyncio.create_task(_watch_pipelines(settings.pipelines_dir, settings.watch_seconds)))
        control.append(await nc.subscribe(subjects.control(name, "health"), queue=name, cb=_health_responder(ctx)))
        log.info("service started", instance=ctx.instance, pipelines=sorted(ctx.pipelines))

    @app.on_shutdown
    async def _stop() -> None:
        for t in tasks:
            t.cancel()
        for sink in sinks:
            remove_sink(sink)
        for sub in control:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if ctx.kv is not None:  # a clean stop leaves no heartbeat behind for `jetl health` to call missing
            with contextlib.suppress(Exception):
                await ctx.kv.delete(heartbeat_key(ctx.name, ctx.instance))
        log.info("service stopping", instance=ctx.instance)

    app.context.set_global("jetl_service", ctx)
    return app


LOG_QUEUE = 10_000
"""Log lines a service holds for shipping; past it, lines are dropped and counted (`log_lines_dropped`)."""


class LogShipper:
    """Publishes log lines that carry a run id to JETL_LOGS through one bounded queue drained by one task.

    Logging must never block a stage: `offer` never waits, and when the queue is full the line is dropped and
    counted (the service's own log file keeps it). Lines may be logged from any thread.
    """

    def __init__(self, nc: Any, *, maxsize: int = LOG_QUEUE, dropped: Callable[[int], None] | None = None) -> None:
        self._nc = nc
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize)
        self._on_drop = dropped
        self.dropped = 0
        """Lines dropped because the queue was full."""

    def start(self) -> asyncio.Task[None]:
        """The one task that drains the queue (cancel it to stop)."""
        return self._loop.create_task(self._drain())

    def offer(self, event: dict[str, Any]) -> None:
        """A log sink: queue one line for shipping, or drop it (counted) when the queue is full."""
        run_id, pipeline = event.get("run_id"), event.get("pipeline")
        if not run_id or not pipeline or self._nc.is_closed:
            return
        try:
            item = (subjects.logs(pipeline, run_id), orjson.dumps(event, default=str))
        except Exception:  # a run id that is no subject token, a value orjson cannot write: not shippable
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._put(item)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: tuple[str, bytes]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)

    async def _drain(self) -> None:
        while True:
            subject, data = await self._queue.get()
            # a connection that is closed or reconnecting must not stop the shipper
            with contextlib.suppress(Exception):
                await self._nc.publish(subject, data)


async def _heartbeat(ctx: ServiceContext) -> None:
    """Tell `jetl health` this instance is alive, with its counters, its consumer's lag, the pipelines it loaded
    (name: code hash) and the modules it could not load."""
    while True:
        if ctx.pipeline_stages:
            with contextlib.suppress(Exception):  # the server away: bound at a later beat
                await bind_pipelines(ctx)
        if ctx.kv is not None:
            lag = await _consumer_lag(ctx)
            body = orjson.dumps(
                {
                    "service": ctx.name,
                    "instance": ctx.instance,
                    "at": time.time(),
                    "started_at": ctx.started_at,
                    "stats": ctx.stats,
                    "lag": lag,
                    "restarts": ctx.settings.restarts,
                    "load_errors": reload_errors(),
                    "paused": str(ctx.bus.paused) if ctx.bus.paused is not None else None,
                    "unbound": ctx.unbound,
                    # what an operator may run (`jetl run` asks these, never importing a pipeline module itself)
                    "pipelines": {name: p.code_hash for name, p in get_pipeline_registry().items()},
                }
            )
            with contextlib.suppress(Exception):
                await put_expiring(
                    ctx.kv, heartbeat_key(ctx.name, ctx.instance), body, ctx.settings.nats.heartbeat_ttl_s
                )
        await asyncio.sleep(HEARTBEAT_S)


async def _consumer_lag(ctx: ServiceContext) -> dict[str, Any] | None:
    """num_pending / num_ack_pending of this service's durable (also exported as metrics); of a per-pipeline one,
    summed over the consumers it pulls from, with each under "pipelines"; the scheduler's, over the tracker shards
    it holds, under "shards"."""
    durable = ctx.consumer
    names = sorted(ctx.bound) if durable is None or durable in subjects.PER_PIPELINE else [durable]
    if not names:
        return None
    js = ctx.broker.connection.jetstream()
    stream = STREAMS[CONSUMERS[durable or names[0]]].name  # a per-pipeline durable's, or the tracker shards'
    per: dict[str, dict[str, int]] = {}
    for name in names:
        try:
            info = await js.consumer_info(stream, name)
        except Exception:
            continue
        metrics.lag(name, info.num_pending or 0, info.num_ack_pending or 0)
        per[name] = {"pending": info.num_pending or 0, "ack_pending": info.num_ack_pending or 0}
    if not per:
        return None
    total = {
        "pending": sum(v["pending"] for v in per.values()),
        "ack_pending": sum(v["ack_pending"] for v in per.values()),
    }
    if durable is None:  # the tracker shards the scheduler holds
        return {**total, "shards": per}
    return {**total, "pipelines": per} if durable in subjects.PER_PIPELINE else total


async def _watch_pipelines(folder: Any, every: float) -> None:
    """Load new or changed pipeline modules without a restart (a broken one is logged and skipped)."""
    log = get_logger("jetl.registry")
    while True:
        await asyncio.sleep(every)
        try:
            reload_changed(folder)
        except Exception as exc:  # the watcher must outlive a bad poll (a folder briefly unreadable)
            log.error("pipeline watch failed", error=f"{type(exc).__name__}: {exc}")


def _health_responder(ctx: ServiceContext) -> Callable[[Any], Awaitable[None]]:
    """Answer `jetl health` with this instance's registered checks: {"checks": {name: {"ok", "detail"}}}."""

    async def respond(msg: Any) -> None:
        results: dict[str, dict[str, Any]] = {}
        for check_name, check in ctx.health_checks.items():
            try:
                detail = await asyncio.wait_for(check(), timeout=5.0)
                results[check_name] = {"ok": True, "detail": detail}
            except Exception as exc:
                results[check_name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        body = {"service": ctx.name, "instance": ctx.instance, "checks": results, "pipelines": sorted(ctx.pipelines)}
        with contextlib.suppress(Exception):
            await msg.respond(orjson.dumps(body))

    return respond
