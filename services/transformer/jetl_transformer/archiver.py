"""The archiver: every raw batch written to the archive (`jetl.archive`) before it may leave JETL_RAW.

It has its own durable on JETL_RAW beside the transformer's, and the stream keeps a batch until both have acked it
(interest retention), so the archiver acks a batch only once it is written, and never gives a batch up: a write that
fails (the archive full or away) is tried again, with backoff, for as long as it takes (its durable has no
max_deliver). The transformer service pulls it, so archiving scales with transformer replicas.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jetl.archive import Archive
from jetl.logging import bound_contextvars, get_logger
from jetl.runtime.service import ServiceContext
from jetl.runtime.stage import backoff, delivery_count, open_batch
from jetl.subjects import Kind

log = get_logger("jetl.archiver")

RETRY_CAP_S = 30.0
"""Longest wait between tries of a batch the archive would not take."""


async def archive_batch(ctx: ServiceContext, archive: Archive, msg: Any) -> None:
    """Archive one raw batch, then ack it; nak it (to be tried again) when the write fails."""
    opened = await open_batch(msg, "raw batch", Kind.RAW)  # an unreadable one is term'ed (the transformer's too)
    if opened is None:
        return
    batch, _ = opened
    with bound_contextvars(pipeline=batch.pipeline, run_id=batch.run_id, batch_id=batch.batch_id):
        try:
            wrote = await asyncio.to_thread(archive.put, batch.pipeline, batch.run_id, batch.part_id, msg.data)
        except Exception as exc:  # never term'ed: JETL_RAW keeps the batch until it is archived
            attempt = delivery_count(msg)
            delay = backoff(attempt, cap=RETRY_CAP_S)
            log.warning("archiving failed, will retry", error=f"{type(exc).__name__}: {exc}", attempt=attempt)
            ctx.count("archive_failures")
            await msg.nak(delay=delay)
            return
        await msg.ack()
        if wrote:
            ctx.count("batches_archived")
            ctx.count("bytes_archived", len(msg.data))
