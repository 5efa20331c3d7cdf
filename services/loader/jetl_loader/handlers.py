"""The loader stage: clean batch in, validated against the schema, written idempotently, batch.loaded out."""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.nats import NatsRouter

from jetl.errors import SchemaMismatch
from jetl.events import BatchLoaded, SchemaEvolved
from jetl.loaders.batch import batch_model, load_replacing_parent
from jetl.logging import bound_contextvars, get_logger
from jetl.pipeline import Pipeline, schema_hash
from jetl.protocols import EvolvingLoader, Loader, OpenableLoader
from jetl.registry import get_pipeline
from jetl.runtime import heap
from jetl.runtime.service import ServiceContext, stage_subscriber
from jetl.runtime.stage import delivery_count, open_batch, reject_batch, ride_out_outage, settle
from jetl.subjects import Kind
from jetl_loader import lineage
from jetl_loader.control import make_control_router
from jetl_loader.settings import LoaderSettings

log = get_logger("jetl.loader")


def open_loaders(ctx: ServiceContext) -> None:
    """Bind every pipeline's loader to the configured destination (ClickHouse DSN, credentials)."""
    for p in ctx.pipelines.values():
        if isinstance(p.loader, OpenableLoader):
            p.loader.open(ctx.settings.clickhouse_dsn, ctx.settings.clickhouse)


async def handle_clean_batch(
    ctx: ServiceContext, raw: Any, shadows: lineage.Shadows, outage_budget_s: float = 0.0
) -> None:
    """Load one clean batch and decide its message's ack; a destination outage is ridden out for `outage_budget_s`
    (LoaderSettings.outage_budget_s) over the deliveries."""
    opened = await open_batch(raw, "clean batch", Kind.CLEAN)
    if opened is None:
        return
    batch, body = opened
    with bound_contextvars(pipeline=batch.pipeline, run_id=batch.run_id, batch_id=batch.batch_id):
        base = ctx.batch_event_fields(batch)
        pipeline: Pipeline | None = None
        async with settle(raw, lambda exc: reject_batch(ctx, batch, body, "load", exc, base)):
            pipeline = get_pipeline(batch.pipeline)
            base["code_hash"] = pipeline.code_hash
            expected = schema_hash(batch_model(pipeline, batch)) if batch.evolved else pipeline.schema_hash
            if batch.schema_hash != expected:
                raise SchemaMismatch(
                    f"pipeline {batch.pipeline!r}: batch {batch.batch_id} has schema "
                    f"{batch.schema_hash}, the pipeline declares {expected}" + (" (evolved)" if batch.evolved else "")
                )
            await lineage.check_supersedes(ctx.kv, batch)  # before anything is written: a forgery deletes nothing
            if batch.evolved:  # the table is brought up to the evolved model first: each change a migration
                await _evolve(ctx, base, pipeline, batch, shadows.destination(pipeline, batch))
            n = await ride_out_outage(
                lambda: asyncio.to_thread(
                    load_replacing_parent, pipeline, batch, body, shadows.destination(pipeline, batch)
                ),
                outage_budget_s,
                delivery_count(raw),
            )
            await ctx.bus.event(BatchLoaded(**base, records=n, destination=pipeline.loader.describe()))
            ctx.count("batches_loaded")
            ctx.count("records_loaded", n)
            log.info("batch loaded", records=n, destination=pipeline.loader.describe())


async def _evolve(ctx: ServiceContext, base: dict[str, Any], pipeline: Pipeline, batch: Any, dest: Any) -> None:
    """Bring `dest` up to the batch's evolved model (`EvolvingLoader.evolve`: once across replicas, a no-op when it
    is there already) and say so in a `schema.evolved` event when this replica changed it."""
    batch_model(pipeline, batch)  # refuses an evolved batch of a pipeline that does not evolve
    if not isinstance(dest, EvolvingLoader) or batch.evolved is None:
        return
    evolution = dict(batch.evolved)
    statements = await asyncio.to_thread(dest.evolve, pipeline.schema, evolution)
    if statements:
        await ctx.bus.event(
            SchemaEvolved(
                **base,
                evolution=evolution,
                statements=statements,
                destination=dest.describe() if isinstance(dest, Loader) else "",
            )
        )
        log.warning("schema evolved", evolution=evolution, statements=len(statements))


def make_router(ctx: ServiceContext) -> NatsRouter:
    """The loader's subscriber: the durable pull consumers on JETL_CLEAN, one per pipeline, shared by replicas."""
    settings = ctx.settings if isinstance(ctx.settings, LoaderSettings) else LoaderSettings()
    heap.freeze_heap()  # start-up is done: freeze what it built, collect young objects less often (jetl.runtime.heap)
    open_loaders(ctx)
    router = NatsRouter()
    shadows = lineage.Shadows()
    router.include_router(make_control_router(ctx))  # count and diff: questions only the destination's owner answers

    stage_subscriber(
        router,
        "loader",
        lambda raw: handle_clean_batch(ctx, raw, shadows, settings.outage_budget_s),
        fetch_batch=settings.fetch_batch,
        fetch_timeout=settings.fetch_timeout,
        ctx=ctx,
    )

    return router
