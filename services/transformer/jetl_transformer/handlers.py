"""The transformer stage: raw batch in, transformers in order, schema validation over the whole batch, clean out.

Records that fail a transformer or the schema go to the DLQ with pipeline, origin (file:line), field and reason;
the rest of the batch goes on. A clean batch larger than a message travels in parts (`Batch.part`), and a record
too large for any message is dead-lettered by reference. A batch that cannot be transformed at all is
dead-lettered whole.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from typing import Any

from faststream.nats import NatsRouter

from jetl.archive import Archive, placed
from jetl.errors import SchemaFrozen, SchemaMismatch, TerminalError, TransientError
from jetl.events import BatchRejected, BatchTransformed, SchemaDrift
from jetl.evolution import evolution_of, evolved_pipeline
from jetl.logging import bound_contextvars, get_logger
from jetl.messages.deadletter import MALFORMED_INPUT, DeadLetter
from jetl.messages.payload import PAYLOAD_HEADROOM, cut_body, too_large
from jetl.records import records_adapter, to_ipc
from jetl.registry import get_pipeline, get_pipeline_registry
from jetl.runtime import heap
from jetl.runtime.service import ServiceContext, stage_subscriber
from jetl.runtime.stage import open_batch, reject_batch, settle, stream_sequence
from jetl.state import get_run
from jetl.subjects import Kind
from jetl.transformers.chain import arrow_path, run_transformers
from jetl.transformers.drift import Contracted, apply_contract, batch_drift
from jetl_transformer.archiver import archive_batch
from jetl_transformer.settings import TransformerSettings

log = get_logger("jetl.transformer")


async def handle_raw_batch(ctx: ServiceContext, raw: Any) -> None:
    """Transform one raw batch and decide its message's ack."""
    opened = await open_batch(raw, "raw batch", Kind.RAW)
    if opened is None:
        return
    batch, body = opened
    with bound_contextvars(pipeline=batch.pipeline, run_id=batch.run_id, batch_id=batch.batch_id):
        base = ctx.batch_event_fields(batch)
        async with settle(raw, lambda exc: reject_batch(ctx, batch, body, "transform", exc, base)):
            pipeline = get_pipeline(batch.pipeline)
            base["code_hash"] = pipeline.code_hash
            if batch.schema_hash != pipeline.schema_hash and not pipeline.transformers:
                raise SchemaMismatch(
                    f"batch {batch.batch_id} was extracted under schema {batch.schema_hash}, "
                    f"pipeline now declares {pipeline.schema_hash}"
                )
            if batch.transformed:
                await _check_redrive(ctx, batch)
            work, count, kept, discarded = body, batch.count, None, 0
            evolution: dict[str, Any] | None = None
            # a redrive of what the loader rejected (`transformed`) is evolved again: its records hold the new fields
            if pipeline.schema_contract is not None and (not batch.transformed or pipeline.schema_contract == "evolve"):
                contracted = await _hold_to_contract(ctx, batch, base, pipeline, body)
                work, count, kept, discarded = (
                    contracted.body,
                    contracted.count,
                    contracted.kept,
                    contracted.discarded_rows,
                )
                if pipeline.schema_contract == "evolve" and contracted.fields:
                    evolution = evolution_of(pipeline.schema, contracted.fields, tuple(pipeline.primary_key))
            # under evolve, the batch is validated by the evolved model (new columns, wider types: jetl.evolution)
            runner = evolved_pipeline(pipeline, evolution) if evolution else pipeline
            clean, encoding, n_in, n_out, issues = await asyncio.to_thread(
                partial(run_transformers, transform=not batch.transformed), runner, work, count
            )
            n_in += discarded  # rows the contract dropped: filtered, in the ledger
            for i in issues:
                if kept is not None:  # back to its place in the raw batch
                    i.index = kept[i.index] if 0 <= i.index < len(kept) else -1
                if i.index >= 0:
                    i.origin = batch.origin(i.index)
            if pipeline.schema_contract is None and not batch.transformed:  # a redrive's records drift no more
                await _report_drift(ctx, batch, base, pipeline, body, whole=bool(issues))
            # A transform may grow a batch past what a message carries (the raw one fit): it is cut by bytes into
            # parts, in order, each its own message; a record too large for any message is dead-lettered by reference.
            room = ctx.bus.max_payload - PAYLOAD_HEADROOM
            pieces: list[tuple[bytes, int]] = [(clean, n_out)]
            oversized: list[tuple[int, bytes]] = []
            if len(clean) > room:
                pieces, oversized = await asyncio.to_thread(cut_body, clean, encoding, room)
                del clean
                aligned = n_out == n_in and not issues  # clean record i is raw record i: its origin is known
                if oversized:
                    await ctx.bus.dead_letter_oversized(
                        batch, "transform", [((batch.origin(i) if aligned else None) or "", r) for i, r in oversized]
                    )
            if issues:
                # Input that is not a record at all (a malformed line) is kept apart: no redrive can mend it.
                for group, error_type in (
                    ([i for i in issues if i.unreadable], MALFORMED_INPUT),
                    ([i for i in issues if not i.unreadable], "RecordError"),
                ):
                    if group:
                        await ctx.bus.dead_letter(DeadLetter.of_issues(batch, "transform", group, error_type))
                for i in issues[:5]:
                    log.warning("record rejected", reason=i.describe(batch.pipeline))
            rejected = len(issues) + len(oversized)
            if rejected:
                first = (
                    issues[0].describe(batch.pipeline)
                    if issues
                    else too_large(len(oversized[0][1]), ctx.bus.max_payload)
                )
                await ctx.bus.event(BatchRejected(**base, stage="transform", records=rejected, reason=first))
            version = placed(batch, stream_sequence(raw)).version
            offset = 0
            for part, (piece, count) in enumerate(pieces):
                out = batch.model_copy(
                    update={
                        "count": count,
                        "encoding": encoding,
                        "origins": None,
                        "origin_runs": None,
                        "schema_hash": runner.schema_hash,
                        "schema_name": pipeline.schema.__name__,
                        "evolved": evolution or None,
                        "part": part,
                        "parts": len(pieces),
                        "version": None if version is None else version + offset,
                    }
                )
                offset += count
                await ctx.bus.clean_batch(out, piece)
            filtered = n_in - n_out - len(issues)
            n_out -= len(oversized)
            await ctx.bus.event(
                BatchTransformed(
                    **{**base, "parts": len(pieces)},
                    records_in=n_in,
                    records_out=n_out,
                    rejected=rejected,
                    filtered=filtered,
                )
            )
            ctx.count("batches_transformed")
            ctx.count("records_rejected", rejected)
            log.info(
                "batch transformed",
                records_in=n_in,
                records_out=n_out,
                rejected=rejected,
                filtered=filtered,
                parts=len(pieces),
            )


async def _report_drift(
    ctx: ServiceContext, batch: Any, base: dict[str, Any], pipeline: Any, body: bytes, *, whole: bool
) -> None:
    """Say how the batch's records differ from the pipeline's input model, if they do (`jetl.transformers.drift`):
    looking at every record when some were rejected (the slow path already), else at its first and last."""
    try:
        if whole:
            fields, looked_at = await asyncio.to_thread(batch_drift, pipeline, body, batch.count, whole=True)
        else:  # two records: less than the hop to a thread
            fields, looked_at = batch_drift(pipeline, body, batch.count, whole=False)
    except Exception as exc:  # a report about the data never fails the data: the batch's records are already judged
        log.warning("schema drift not computed", error=f"{type(exc).__name__}: {exc}")
        return
    if fields:
        await ctx.bus.event(SchemaDrift(**base, fields=fields, looked_at=looked_at))
        log.warning("schema drift", fields=[f"{f.kind} {f.path}" for f in fields][:10])


async def _hold_to_contract(
    ctx: ServiceContext, batch: Any, base: dict[str, Any], pipeline: Any, body: bytes
) -> Contracted:
    """Check every record against the input model and apply the pipeline's schema contract (`apply_contract`),
    saying what drifted and what was discarded; a batch a freeze contract holds raises SchemaFrozen (held whole in the
    DLQ, its run failed naming the drift)."""
    contracted = await asyncio.to_thread(apply_contract, pipeline, body, batch.count)
    if contracted.fields:
        await ctx.bus.event(
            SchemaDrift(
                **base,
                fields=contracted.fields,
                looked_at=contracted.looked_at,
                discarded_rows=contracted.discarded_rows,
                discarded_values=contracted.discarded_values,
            )
        )
        log.warning(
            "schema drift",
            contract=str(pipeline.schema_contract),
            fields=[f"{f.kind} {f.path}" for f in contracted.fields][:10],
            discarded_rows=contracted.discarded_rows,
            discarded_values=contracted.discarded_values,
        )
    if contracted.frozen:
        raise SchemaFrozen(f"schema contract freeze held batch {batch.batch_id}: {contracted.describe()}")
    return contracted


async def _check_redrive(ctx: ServiceContext, batch: Any) -> None:
    """Refuse records marked as transformed outside a redrive: only a redrive (which only the scheduler or an operator
    may request, and the run state records) sends back what the loader rejected, and nothing else skips the
    transformers."""
    state = await get_run(ctx.kv, batch.pipeline, batch.run_id) if ctx.kv is not None else None
    if state is None:  # the tracker has not folded its run.requested yet
        raise TransientError(f"run {batch.run_id} is not in the run state yet: cannot tell whether it is a redrive")
    if not state.redrive:
        raise TerminalError(f"batch {batch.batch_id} is marked as transformed, but run {batch.run_id} is no redrive")


def warm_up() -> None:
    """Pay the first batch's one-time costs at start-up instead of in some run's latency: importing pyarrow and,
    through its conversion of time-zone aware datetimes, pandas (2.3 s on the loaded 2-core bench host, ~0.6 s on a
    quiet 16-core one), and each registered pipeline's validators and Arrow schemas. With N replicas sharing a
    consumer, each replica paid this on the first batch it happened to take: that was the p99 of 600+ ms from 4
    replicas up (bench/README.md). It runs in a thread beside the start-up (`make_router`), which it delayed by its
    whole length: every stack start paid ~2 s more before its transformer took a batch (the test suite starts about
    60). Never fatal: a pipeline that cannot be prepared fails on its batch, as before."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.acero  # the flat pipelines' expressions (jetl.transformers.column.project)
    import pyarrow.json  # the flat pipelines' reader (arrow_path)

    to_ipc(pa.table({"at": pa.array([datetime.now(UTC)], type=pa.timestamp("us", tz="UTC"))}))
    try:
        pipelines = list(get_pipeline_registry().values())
    except Exception as exc:  # a pipelines folder that does not load: its runs report it
        log.debug("warm-up skipped the pipelines", error=str(exc))
        return
    for pipeline in pipelines:
        try:
            records_adapter(pipeline.schema).arrow_schema  # noqa: B018 - builds (and caches) the column validators
            pipeline.trusted_fields  # noqa: B018
            arrow_path(pipeline)
        except Exception as exc:
            log.debug("warm-up skipped a pipeline", pipeline=pipeline.name, error=str(exc))


def _warm_up_then_freeze() -> None:
    try:
        warm_up()
    except Exception as exc:  # never fatal, and quiet when the service stops meanwhile (imports fail at exit)
        log.debug("warm-up stopped", error=f"{type(exc).__name__}: {exc}")
        return
    heap.freeze_heap()  # start-up is done: freeze what it built, collect young objects less often


def make_router(ctx: ServiceContext) -> NatsRouter:
    """The transformer's subscribers, durable pull consumers on JETL_RAW shared by every replica: the
    transformer's, one per pipeline (`jetl.subjects.PER_PIPELINE`), and the archiver's, one for all pipelines
    (`jetl_transformer.archiver`), which keeps every raw batch for good."""
    settings = ctx.settings if isinstance(ctx.settings, TransformerSettings) else TransformerSettings()
    # beside the start-up, not before it: the consumers bind while pyarrow imports (a first batch that needs it waits
    # for the import either way), then the heap is frozen (jetl.runtime.heap)
    threading.Thread(target=_warm_up_then_freeze, name="jetl-warm-up", daemon=True).start()
    router = NatsRouter()

    stage_subscriber(
        router,
        "transformer",
        lambda raw: handle_raw_batch(ctx, raw),
        fetch_batch=settings.fetch_batch,
        fetch_timeout=settings.fetch_timeout,
        ctx=ctx,
    )
    archive = Archive.of(ctx.settings)
    stage_subscriber(
        router,
        "archiver",
        lambda raw: archive_batch(ctx, archive, raw),
        fetch_batch=settings.archive_fetch_batch,
        fetch_timeout=settings.fetch_timeout,
    )
    return router
