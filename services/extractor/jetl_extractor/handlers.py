"""The extractor stage: run request in, raw batches out (plus run.started, batch.extracted, run.extracted).

Partitioned extraction: the replica that takes a run request asks the pipeline's extractors for partitions
(`Extractor.partitions`). When there are two or more, it logs run.partitioned (with the cursor the run reaches once
all are extracted) and publishes one `PartitionWork` per partition to `jetl.run.<pipeline>.<run>.<partition>`, on
the same work-queue stream and durable as run requests, then acks the request: any replica takes any partition.
Each partition's batches are `<run>/<partition>/<seq>`, and its partition.extracted says how many; the tracker
counts the run extracted once every partition has reported. A replica killed mid-partition leaves the work item
unacked: it is redelivered and extracted again with the same batch ids, which JetStream drops as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from faststream.nats import NatsRouter

from jetl import subjects
from jetl.cursors import cursor_of, joined_cursor
from jetl.errors import OverlappingRun, TerminalError
from jetl.events import (
    BatchExtracted,
    BatchRejected,
    PartitionExtracted,
    RunExtracted,
    RunFailed,
    RunPartitioned,
    RunStarted,
)
from jetl.logging import bound_contextvars, get_logger
from jetl.messages import MALFORMED_INPUT, Batch, DeadLetter, PartitionWork, RunRequest, encode_records, utcnow
from jetl.protocols import Chunk, ExtractContext, Partition
from jetl.registry import get_pipeline
from jetl.runtime import heap
from jetl.runtime.service import ServiceContext, stage_subscriber
from jetl.runtime.stage import decide_ack
from jetl.state import add_active, get_cursor, get_run, unfinished_runs
from jetl_extractor.resend import Resend
from jetl_extractor.settings import ExtractorSettings

__all__ = ["cursor_of", "handle_run_request", "joined_cursor", "make_router"]

log = get_logger("jetl.extractor")
IN_PROGRESS_EVERY_S = 10.0


class Extraction:
    """One run's extraction: re-chunks extractor output into pipeline-sized batches and publishes them."""

    def __init__(
        self, ctx: ServiceContext, req: RunRequest, msg: Any, concurrency: int, work: PartitionWork | None = None
    ) -> None:
        self.ctx, self.req, self.msg, self.work = ctx, req, msg, work
        self.partition = work.partition if work is not None else None
        self.pipeline = get_pipeline(req.pipeline)
        self.seq = 0
        self.records = 0
        self.rejected = 0
        self.sem = asyncio.Semaphore(concurrency)
        self.pending: set[asyncio.Task[None]] = set()
        self.last_progress = time.monotonic()
        self.buf: list[Any] = []
        """Records, or their JSON texts (`Chunk.raw`), not yet published."""
        self.origins: list[str] = []
        """The origin of each in `buf`, unless `whole` holds them."""
        self.bad: list[tuple[str, str]] = []
        self.whole: Chunk | None = None
        """A chunk `buf` holds alone, as it came: published as one batch with its own origins (the file extractor
        numbers its lines as runs, not as a string each) unless another chunk joins it first."""

    def _event_base(self) -> dict[str, Any]:
        return self.ctx.event_fields(self.req.pipeline, self.req.run_id, self.pipeline.code_hash)

    async def run(self) -> None:
        p, req, work = self.pipeline, self.req, self.work
        if work is not None:
            cursor = work.cursor
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
        plan = await self._plan(ectx, cursor)
        if len(plan) > 1:
            await self._publish_plan(plan, cursor)
            return
        for index, extractor in enumerate(p.extractors):
            async for chunk in extractor.extract(replace(ectx, cursor=cursor_of(cursor, index))):
                await self._add(chunk)
        await self._flush(final=True)
        await self._drain()
        reached = joined_cursor(p.extractors)
        await self.ctx.bus.event(
            RunExtracted(
                **self._event_base(),
                batches=self.seq,
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

    async def _plan(self, ectx: ExtractContext, cursor: dict[str, Any] | None) -> list[tuple[int, Partition | None]]:
        """The run's partitions as (extractor index, partition; None: all of that extractor). Empty or one: the run
        is extracted here, whole. An extractor that keeps a cursor but cannot plan partitions (so cannot say its
        cursor before extracting) keeps the run whole: the cursor must move exactly once, when the run completes."""
        plan: list[tuple[int, Partition | None]] = []
        for index, extractor in enumerate(self.pipeline.extractors):
            planner = getattr(extractor, "partitions", None)
            if planner is None:
                if getattr(extractor, "keeps_cursor", False):
                    return []
                plan.append((index, None))
                continue
            at = replace(ectx, cursor=cursor_of(cursor, index))
            parts: list[Partition] = await asyncio.to_thread(planner, at)  # may scan a file for line numbers
            plan.extend((index, part) for part in parts)
        return plan

    async def _publish_plan(self, plan: list[tuple[int, Partition | None]], cursor: dict[str, Any] | None) -> None:
        p, req = self.pipeline, self.req
        reached = joined_cursor(p.extractors)  # after `partitions`: the cursor once every partition is extracted
        await self.ctx.bus.event(RunPartitioned(**self._event_base(), partitions=len(plan), cursor=reached))
        for n, (index, part) in enumerate(plan):
            work = PartitionWork(
                request=req,
                partition=f"p{n:04d}",
                extractor=index,
                spec=part.spec if part is not None else {},
                partitions=len(plan),
                cursor=cursor,
            )
            await self.ctx.bus.publish_work(
                work.model_dump_json().encode(), subjects.run_partition(p.name, req.run_id, work.partition), work.msg_id
            )
        log.info("run partitioned", partitions=len(plan))

    async def _extract_partition(self, ectx: ExtractContext, work: PartitionWork) -> None:
        p = self.pipeline
        if work.extractor >= len(p.extractors):
            raise TerminalError(f"pipeline {p.name!r} has no extractor #{work.extractor} (partition {work.partition})")
        extractor = p.extractors[work.extractor]
        at = replace(ectx, cursor=cursor_of(work.cursor, work.extractor))
        extract_partition = getattr(extractor, "extract_partition", None)
        if extract_partition is not None and work.spec:
            chunks = extract_partition(at, Partition(work.spec))
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
        size = self.pipeline.batch_size
        if self.whole is not None:  # another chunk joins the one held whole: it needs its origins one by one
            self.origins, self.whole = self.whole.origin_list(), None
        if not self.buf and chunk.count <= size:
            self.whole, self.buf = chunk, list(chunk.items)
        else:
            self.buf.extend(chunk.items)
            self.origins.extend(chunk.origin_list())
        self.bad.extend(chunk.rejected)
        while len(self.buf) >= size:
            await self._flush(final=False)
        if time.monotonic() - self.last_progress > IN_PROGRESS_EVERY_S:
            self.last_progress = time.monotonic()
            await self.msg.in_progress()

    async def _flush(self, *, final: bool) -> None:
        size = self.pipeline.batch_size
        if not self.buf and not self.bad:
            return
        take = len(self.buf) if final else size
        whole, self.whole = self.whole, None
        items, self.buf = self.buf[:take], self.buf[take:]
        if whole is not None:  # `_add` holds a chunk whole only when it fits one batch: it is all of `items`
            origins, runs = whole.origins, whole.origin_runs
        else:
            origins, self.origins = self.origins[:take], self.origins[take:]
            runs = None
        bad, self.bad = self.bad, []
        seq = self.seq
        self.seq += 1
        self.records += len(items)
        self.rejected += len(bad)
        await self.sem.acquire()
        task = asyncio.create_task(self._publish(seq, items, origins, runs, bad))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        if final and self.buf:
            await self._flush(final=True)

    async def _publish(
        self,
        seq: int,
        items: list[Any],
        origins: list[str] | None,
        runs: list[tuple[str, int, int]] | None,
        bad: list[tuple[str, str]],
    ) -> None:
        count, body = len(items), encode_records(items)
        del items  # encoded: the records (or texts) need not wait in memory for the publish (~30 MB a batch)
        try:
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
                            {"index": None, "origin": o, "field": None, "message": m, "record": None} for o, m in bad
                        ],
                    )
                )
                await self.ctx.bus.event(
                    BatchRejected(
                        **self._event_base(),
                        batch_id=batch.batch_id,
                        seq=seq,
                        stage="extract",
                        records=len(bad),
                        reason=bad[0][1],
                    )
                )
            await self.ctx.bus.raw_batch(batch, body)
            await self.ctx.bus.event(
                BatchExtracted(
                    **self._event_base(),
                    batch_id=batch.batch_id,
                    seq=seq,
                    records=count,
                    rejected=len(bad),
                )
            )
            self.ctx.count("batches_extracted")
            self.ctx.count("records_extracted", count)
        finally:
            self.sem.release()

    async def _drain(self) -> None:
        if self.pending:
            results = await asyncio.gather(*self.pending, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r


@contextlib.asynccontextmanager
async def _keep_alive(raw: Any, ack_wait: float) -> AsyncIterator[None]:
    """Tell JetStream the run request is still being worked on, well inside its ack wait, for as long as it is.

    Without this, an extraction that outlives the ack wait (a slow source, or a short ack wait) is redelivered to
    another replica while it is still running.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(min(IN_PROGRESS_EVERY_S, ack_wait / 3))
            with contextlib.suppress(Exception):
                await raw.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


async def _refuse_overlap(ctx: ServiceContext, req: RunRequest) -> None:
    """Raise OverlappingRun when `req` would extract from the cursor an earlier, unfinished run of its pipeline is
    about to move (the cursor advances only when a run completes, so both would load the same rows); otherwise
    enter `req` in the unfinished index itself, so that the next run sees it even before the tracker folds its
    run.requested (a stack that has just started)."""
    if ctx.kv is None or req.replay_of is not None or req.redrive or not get_pipeline(req.pipeline).keeps_cursor:
        return
    running, _ = await unfinished_runs(ctx.kv, req.pipeline, utcnow())
    for run_id, (at, other) in sorted(running.items(), key=lambda item: item[1][0]):
        if run_id == req.run_id:
            continue
        if at >= req.requested_at:
            break
        if other is not None and other.trigger in ("replay", "redrive"):
            continue  # resends batches from the log: they neither read nor move the cursor
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


def make_router(ctx: ServiceContext) -> NatsRouter:
    """The extractor's one subscriber: the shared durable pull consumer on JETL_RUNS."""
    settings = ctx.settings if isinstance(ctx.settings, ExtractorSettings) else ExtractorSettings()
    heap.freeze_heap()  # start-up is done: freeze what it built, collect young objects less often (jetl.runtime.heap)
    router = NatsRouter()

    stage_subscriber(
        router,
        "extractor",
        lambda raw: handle_run_request(ctx, raw, settings.publish_concurrency),
        fetch_batch=settings.fetch_batch,
        fetch_timeout=settings.fetch_timeout,
    )

    return router


async def handle_run_request(ctx: ServiceContext, raw: Any, concurrency: int = 8) -> None:
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
    except Exception as exc:
        log.error("unreadable run request", error=str(exc))
        await raw.term()
        return
    with bound_contextvars(pipeline=req.pipeline, run_id=req.run_id):
        error: BaseException | None = None
        try:
            if work is not None:
                async with _keep_alive(raw, ctx.settings.nats.ack_wait):
                    await Extraction(ctx, req, raw, concurrency, work).run()
            elif await _already_completed(ctx, req):
                log.info("run already completed; request ignored (use --force to run it again)")
            else:
                await _refuse_overlap(ctx, req)
                async with _keep_alive(raw, ctx.settings.nats.ack_wait):
                    if req.replay_of is not None or req.redrive:
                        await Resend(ctx, req).run()  # batches from the log: a replay or a redrive
                    else:
                        await Extraction(ctx, req, raw, concurrency).run()
        except Exception as exc:
            error = exc

        async def fail(exc: BaseException) -> None:
            await ctx.bus.event(
                RunFailed(
                    pipeline=req.pipeline,
                    run_id=req.run_id,
                    service="extractor",
                    instance=ctx.instance,
                    error=f"{type(exc).__name__}: {exc}",
                    stage="extract",
                )
            )

        await decide_ack(raw, error, fail)
