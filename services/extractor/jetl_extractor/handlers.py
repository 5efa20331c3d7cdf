"""The extractor stage: run request in, raw batches out (plus run.started, batch.extracted, run.extracted).

Partitioned extraction: the replica that takes a run request asks the pipeline's extractors for partitions
(`Extractor.partitions`). When there are two or more, it logs run.partitioned (with the cursor the run reaches once
all are extracted) and publishes one `PartitionWork` per partition to `jetl.run.<pipeline>.<run>.<partition>`, on
the same work-queue stream and durable as run requests, then acks the request: any replica takes any partition.
Each partition's batches are `<run>/<partition>/<seq>`, and its partition.extracted says how many; the tracker
counts the run extracted once every partition has reported. A replica killed mid-partition leaves the work item
unacked: it is redelivered and extracted again with the same batch ids, which JetStream drops as duplicates.
Planning and publishing partitions is `partitions`; cutting output into batches by count and bytes is `batching`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from faststream.nats import NatsRouter
from nats.js.errors import NotFoundError

from jetl import subjects
from jetl.errors import JetlError, OverlappingRun, TerminalError, TransientError, classify
from jetl.events import (
    BatchExtracted,
    BatchRejected,
    PartitionExtracted,
    RunExtracted,
    RunFailed,
    RunStarted,
)
from jetl.logging import bound_contextvars, get_logger
from jetl.messages.deadletter import MALFORMED_INPUT, DeadLetter, DeadRecord
from jetl.messages.models import Batch, PartitionWork, RunRequest, utcnow
from jetl.messages.payload import too_large
from jetl.messages.wire import dumps
from jetl.positions import cursor_of, joined_cursor
from jetl.protocols import Chunk, ConfirmingExtractor, ExtractContext, Partition, PartitionedExtractor, Unreadable
from jetl.registry import get_pipeline
from jetl.runtime import heap
from jetl.runtime.service import ServiceContext, keep_alive, stage_subscriber
from jetl.runtime.stage import settle
from jetl.state import add_active, get_cursor, get_run, unfinished_runs
from jetl_extractor.batching import Batcher
from jetl_extractor.partitions import confirm_when_extracted, plan_partitions, publish_plan, release_all
from jetl_extractor.resend import Resend
from jetl_extractor.settings import ExtractorSettings

__all__ = ["RunSlots", "cursor_of", "handle_run_request", "joined_cursor", "make_router"]

log = get_logger("jetl.extractor")


class Extraction:
    """One run's extraction: re-chunks extractor output into pipeline-sized batches and publishes them."""

    def __init__(
        self, ctx: ServiceContext, req: RunRequest, concurrency: int, work: PartitionWork | None = None
    ) -> None:
        self.ctx, self.req, self.work = ctx, req, work
        self.partition = work.partition if work is not None else None
        self.pipeline = get_pipeline(req.pipeline)
        self.seq = 0
        self.records = 0
        self.rejected = 0
        self.sem = asyncio.Semaphore(concurrency)
        self.pending: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        """The first publish that failed: the run fails with it (no publish runs unobserved)."""
        self.acked_batches = 0
        """Batches JetStream acknowledged: all that run.extracted may count."""
        self.batches = Batcher(self.pipeline.batch_size, lambda: ctx.bus.max_payload, self._send, self._check_publishes)

    def _event_base(self) -> dict[str, Any]:
        return self.ctx.event_fields(self.req.pipeline, self.req.run_id, self.pipeline.code_hash)

    async def run(self) -> None:
        p, req, work = self.pipeline, self.req, self.work
        if work is not None:
            cursor = work.cursor
            if p.keeps_cursor and self.ctx.kv is not None and cursor != await get_cursor(self.ctx.kv, p.name):
                # a run's partitions all start from the cursor it was planned at, which moves only when it completes:
                # any other would have the replica read again what earlier runs loaded
                raise TerminalError(
                    f"partition {work.partition} of {req.run_id} starts from another cursor than the pipeline's: "
                    "refused"
                )
        else:
            cursor = await get_cursor(self.ctx.kv, p.name) if self.ctx.kv is not None else None
            await self.ctx.bus.event(RunStarted(**self._event_base(), cursor=cursor))
            if p.keeps_cursor:
                log.info("run started", cursor_from=cursor)
        ectx = ExtractContext(
            pipeline=p.name,
            run_id=req.run_id,
            data_interval_start=req.data_interval_start,
            data_interval_end=req.data_interval_end,
            cursor=cursor,
            params=req.params,
            force=req.force,
            raw_json=True,  # JSON lines pass unparsed: the transformer parses them in the pass that validates them
        )
        if work is not None:
            await self._extract_partition(ectx, work)
            return
        plan = await plan_partitions(p.extractors, ectx, cursor)
        if len(plan) > 1:
            try:
                await publish_plan(self.ctx.bus, self._event_base(), p, req, plan, cursor)
            except BaseException:
                await release_all(p, ectx)
                raise
            _background(confirm_when_extracted(self.ctx.kv, p, ectx))
            return
        for index, extractor in enumerate(p.extractors):
            async for chunk in extractor.extract(replace(ectx, cursor=cursor_of(cursor, index))):
                await self._add(chunk)
        await self._flush(final=True)
        await self._drain()
        for extractor in p.extractors:  # every batch is on JETL_RAW: now the source may forget what they hold
            if isinstance(extractor, ConfirmingExtractor):
                await extractor.confirm(ectx)
        reached = joined_cursor(p.extractors)
        await self.ctx.bus.event(
            RunExtracted(
                **self._event_base(),
                batches=self.acked_batches,
                records=self.records,
                rejected=self.rejected,
                cursor=reached,
            )
        )
        log.info(
            "run extracted",
            batches=self.seq,
            records=self.records,
            rejected=self.rejected,
            **({"cursor_from": cursor, "cursor_to": reached} if p.keeps_cursor else {}),
        )

    async def _extract_partition(self, ectx: ExtractContext, work: PartitionWork) -> None:
        p = self.pipeline
        if work.extractor >= len(p.extractors):
            raise TerminalError(f"pipeline {p.name!r} has no extractor #{work.extractor} (partition {work.partition})")
        extractor = p.extractors[work.extractor]
        at = replace(ectx, cursor=cursor_of(work.cursor, work.extractor))
        if isinstance(extractor, PartitionedExtractor) and work.spec:
            chunks = extractor.extract_partition(at, Partition(work.spec))
        else:
            chunks = extractor.extract(at)
        async for chunk in chunks:
            await self._add(chunk)
        await self._flush(final=True)
        await self._drain()
        await self.ctx.bus.event(
            PartitionExtracted(
                **self._event_base(),
                partition=work.partition,
                batches=self.seq,
                records=self.records,
                rejected=self.rejected,
            )
        )
        log.info("partition extracted", partition=work.partition, batches=self.seq, records=self.records)

    async def _add(self, chunk: Chunk) -> None:
        await self.batches.add(chunk)

    async def _flush(self, *, final: bool) -> None:
        await self.batches.flush(final=final)

    async def _send(
        self,
        body: bytes,
        origins: list[str] | None,
        runs: list[tuple[str, int, int]] | None,
        bad: list[tuple[str, str]],
        count: int,
        oversized: list[tuple[str, Any, int]],
        version: int | None = None,
    ) -> None:
        """Take the next seq and publish one batch in the background, a bounded number at a time."""
        seq = self.seq
        self.seq += 1
        await self.sem.acquire()
        task = asyncio.create_task(self._publish(seq, count, body, origins, runs, bad, oversized, version))
        self.pending.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        """Keep the first failure of a background publish: the run fails with it, never just a log line."""
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()

    def _check_publishes(self) -> None:
        """Raise the failure of a publish that has already failed: no later batch is announced after it."""
        if self.failure is not None:
            raise self.failure

    async def _publish(
        self,
        seq: int,
        count: int,
        body: bytes,
        origins: list[str] | None,
        runs: list[tuple[str, int, int]] | None,
        bad: list[tuple[str, str]],
        oversized: list[tuple[str, Any, int]],
        version: int | None = None,
    ) -> None:
        p = self.pipeline
        batch = Batch(
            pipeline=p.name,
            run_id=self.req.run_id,
            seq=seq,
            schema_name=p.schema.__name__,
            schema_hash=p.schema_hash,
            count=count,
            origins=origins if origins and any(origins) and runs is None else None,
            origin_runs=runs,
            partition=self.partition,
            version=version,
        )
        step = "its dead letter"
        try:
            rejected = len(bad) + len(oversized)
            if oversized:  # too large for any message: kept by reference, before the batch is announced
                await self.ctx.bus.dead_letter_oversized(
                    batch, "extract", [(o, x if type(x) is bytes else dumps(x)) for o, x, _ in oversized]
                )
            if bad:  # unreadable input: dead-letter it with file and line, before the batch is announced
                await self.ctx.bus.dead_letter(
                    DeadLetter(
                        pipeline=p.name,
                        run_id=self.req.run_id,
                        batch_id=batch.batch_id,
                        stage="extract",
                        reason=f"{len(bad)} unreadable record(s); first: {bad[0][0]}: {bad[0][1]}",
                        error_type=MALFORMED_INPUT,
                        records=[
                            DeadRecord(
                                index=None,
                                origin=u[0],
                                field=None,
                                message=u[1],
                                record=u.input if isinstance(u, Unreadable) else None,
                            )
                            for u in bad
                        ],
                    )
                )
            if rejected:
                first = (bad[0][1] if bad else None) or too_large(oversized[0][2], self.ctx.bus.max_payload)
                await self.ctx.bus.event(
                    BatchRejected(
                        **self._event_base(),
                        batch_id=batch.batch_id,
                        seq=seq,
                        stage="extract",
                        records=rejected,
                        reason=first,
                    )
                )
            step = "the batch"
            await self.ctx.bus.raw_batch(batch, body)
            step = "its batch.extracted event"
            await self.ctx.bus.event(
                BatchExtracted(
                    **self._event_base(),
                    batch_id=batch.batch_id,
                    seq=seq,
                    records=count,
                    rejected=rejected,
                )
            )
        except Exception as exc:
            raise publish_error(f"batch {batch.batch_id} ({count} records, {len(body)} bytes): {step}", exc) from exc
        finally:
            self.sem.release()
        self.acked_batches += 1
        self.records += count
        self.rejected += rejected
        self.ctx.count("batches_extracted")
        self.ctx.count("records_extracted", count)

    async def _drain(self) -> None:
        """Wait for every publish still in flight; raise the first that failed."""
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        self._check_publishes()
        if self.acked_batches != self.seq:  # cannot happen without a failure above: never announce a lost batch
            raise TerminalError(f"{self.seq - self.acked_batches} of {self.seq} batches were not acknowledged")


_BACKGROUND: set[asyncio.Task[None]] = set()
"""Tasks that outlive the run request that started them (a partitioned run's confirm): kept until done."""


def _background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def publish_error(what: str, exc: BaseException) -> JetlError:
    """A failed publish as the taxonomy's error, naming what was not published: transient (a timeout, a connection
    lost: the run request is retried) or terminal (the run fails)."""
    if isinstance(exc, JetlError) and str(exc).startswith("batch "):
        return exc
    kind = TransientError if classify(exc) == "transient" else TerminalError
    return kind(f"{what} was not published: {type(exc).__name__}: {exc}")


async def _require_consumers(ctx: ServiceContext, pipeline: str) -> None:
    """Refuse a run of a pipeline whose transformer or loader consumer no deploy declared yet (a pipeline added
    since): its clean batches would have no consumer to keep them (JETL_CLEAN is interest retention), and its raw
    batches would leave JETL_RAW once archived, untransformed. Nothing is extracted; the failure says what to do."""
    if ctx.kv is None:  # no deployment behind this context (an in-memory test broker): nothing to check
        return
    js = ctx.broker.connection.jetstream()
    for durable in sorted(subjects.PER_PIPELINE):
        stream = subjects.stream_name(subjects.CONSUMERS[durable])
        name = subjects.stage_durable(durable, pipeline)
        try:
            await js.consumer_info(stream, name)
        except NotFoundError:
            raise TerminalError(
                f"pipeline {pipeline!r} has no consumer {stream}/{name} yet: run `jetl deploy` (it declares the "
                "consumers of every pipeline in the folder), then request the run again; nothing was extracted"
            ) from None


async def _refuse_overlap(ctx: ServiceContext, req: RunRequest) -> None:
    """Raise OverlappingRun when `req` would extract from the cursor an earlier, unfinished run of its pipeline is
    about to move (the cursor advances only when a run completes, so both would load the same rows); otherwise
    enter `req` in the unfinished index itself, so that the next run sees it even before the tracker folds its
    run.requested (a stack that has just started)."""
    pipeline = get_pipeline(req.pipeline)
    if ctx.kv is None or req.replay_of is not None or req.redrive or not pipeline.keeps_cursor:
        return
    running, _ = await unfinished_runs(ctx.kv, req.pipeline, utcnow())
    for run_id, (at, other) in sorted(running.items(), key=lambda item: item[1][0]):
        if run_id == req.run_id:
            continue
        if at >= req.requested_at:
            break
        if other is not None and other.trigger in ("replay", "redrive"):
            continue  # resends batches from the log: they neither read nor move the cursor
        if not pipeline.holds_cursor(other):
            continue  # extracted, and its cursor moved then (`Pipeline.cursor_at_extraction`): it only loads now
        raise OverlappingRun(
            f"pipeline {req.pipeline!r} keeps a cursor, and its run {run_id} (requested {at:%Y-%m-%d %H:%M:%S}) "
            "has not finished: "
            f"{req.run_id} would read what that run is still loading. Runs of it do not overlap: request it "
            f"again once {run_id} has finished (jetl status {req.pipeline})"
        )
    await add_active(ctx.kv, req.pipeline, req.run_id, req.requested_at)


async def _already_completed(ctx: ServiceContext, req: RunRequest) -> bool:
    if ctx.kv is None or req.force:
        return False
    state = await get_run(ctx.kv, req.pipeline, req.run_id)
    return state is not None and state.status == "completed"


class RunSlots:
    """The runs (or partitions) one extractor process works on at once, up to `ExtractorSettings.concurrent_runs`.

    A run extracts in a slot of its own, beside the consume loop, so an API that answers slowly holds one slot, not
    the extractor: runs of other pipelines go on. The consume loop waits for a free slot before it takes the next
    request (the rest stay in JetStream, for other replicas). A request in a slot is kept alive by its own
    in_progress() beats (`keep_alive`), since the consume loop has moved on. Runs of one cursor-keeping pipeline
    still never overlap: the second is refused (`_refuse_overlap`), here as across replicas.
    """

    def __init__(self, size: int, ack_wait: float) -> None:
        self._free = asyncio.Semaphore(size)
        self._ack_wait = ack_wait
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, msg: Any, work: Callable[[], Awaitable[None]]) -> None:
        """Wait for a free slot, then run `work` (which settles `msg`) in it; returns once it has started."""
        await self._free.acquire()
        task = asyncio.create_task(self._run(msg, work))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, msg: Any, work: Callable[[], Awaitable[None]]) -> None:
        try:
            async with keep_alive([msg], self._ack_wait, lambda: 0):
                await work()
        except Exception as exc:  # handle_run_request settles every error itself: this is a bug, kept visible
            log.error("run slot failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._free.release()

    async def idle(self) -> None:
        """Wait until every slot is free (a test's end, a stopping service)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def make_router(ctx: ServiceContext, slots: RunSlots | None = None) -> NatsRouter:
    """The extractor's one subscriber: the shared durable pull consumer on JETL_RUNS, each request extracted in a
    slot of `slots` (by default `concurrent_runs` of them)."""
    settings = ctx.settings if isinstance(ctx.settings, ExtractorSettings) else ExtractorSettings()
    slots = slots or RunSlots(settings.concurrent_runs, ctx.settings.nats.ack_wait)
    heap.freeze_heap()  # start-up is done: freeze what it built, collect young objects less often (jetl.runtime.heap)
    router = NatsRouter()

    stage_subscriber(
        router,
        "extractor",
        lambda raw: slots.start(raw, lambda: handle_run_request(ctx, raw, settings.publish_concurrency)),
        fetch_batch=settings.fetch_batch,
        fetch_timeout=settings.fetch_timeout,
    )

    return router


async def handle_run_request(ctx: ServiceContext, raw: Any, concurrency: int) -> None:
    """Extract one run, or one partition of one (told apart by subject, each read by its model); decide the
    message's ack by the error taxonomy."""
    work: PartitionWork | None = None
    try:
        if subjects.is_partition(raw.subject):
            work = PartitionWork.model_validate_json(raw.data)
            if raw.subject != subjects.run_partition(work.request.pipeline, work.request.run_id, work.partition):
                raise ValueError(f"partition work on {raw.subject} names another run or partition")
            req = work.request
        else:
            req = RunRequest.model_validate_json(raw.data)
            # only the scheduler and operators may publish there (jetl.access): the subject vouches for the pipeline
            if isinstance(raw.subject, str) and raw.subject != subjects.run_request(req.pipeline):
                raise ValueError(f"a run request on {raw.subject} names pipeline {req.pipeline!r}")
    except Exception as exc:
        log.error("unreadable run request", error=str(exc))
        await raw.term()
        return

    async def fail(exc: BaseException) -> None:
        try:
            code_hash = get_pipeline(req.pipeline).code_hash
        except JetlError:  # a pipeline this service does not know: the failure says so, without a hash
            code_hash = ""
        fields = ctx.event_fields(req.pipeline, req.run_id, code_hash)
        await ctx.bus.event(RunFailed(**fields, error=f"{type(exc).__name__}: {exc}", stage="extract"))

    with bound_contextvars(pipeline=req.pipeline, run_id=req.run_id):
        async with settle(raw, fail):
            if work is not None:  # kept alive by its slot's in_progress() beats (RunSlots)
                await Extraction(ctx, req, concurrency, work).run()
            elif await _already_completed(ctx, req):
                log.info("run already completed; request ignored (use --force to run it again)")
            else:
                await _require_consumers(ctx, req.pipeline)
                await _refuse_overlap(ctx, req)
                # the run request is kept alive while this runs by its slot's in_progress() beats (RunSlots)
                if req.replay_of is not None or req.redrive:
                    await Resend(ctx, req).run()  # batches from the log: a replay or a redrive
                else:
                    await Extraction(ctx, req, concurrency).run()
