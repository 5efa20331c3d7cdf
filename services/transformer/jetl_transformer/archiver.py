"""The archiver: every raw batch written to the archive (`jetl.archive`) before it may leave JETL_RAW.

It has its own durable on JETL_RAW beside the transformer's, and the stream keeps a batch until both have acked it
(interest retention), so the archiver acks a batch only once it is written, and never gives a batch up: a write that
fails (the archive full or away) is tried again, with backoff, for as long as it takes (its durable has no
max_deliver). The transformer service pulls it, so archiving scales with transformer replicas. Once an hour, after a
batch, it also removes archived runs past their pipeline's retention (`ArchiveSettings.keep_days`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jetl.archive import Archive, placed
from jetl.logging import bound_contextvars, get_logger
from jetl.messages.wire import encode_batch
from jetl.runtime.service import ServiceContext
from jetl.runtime.stage import backoff, delivery_count, open_batch, stream_sequence
from jetl.subjects import Kind

log = get_logger("jetl.archiver")

RETRY_CAP_S = 30.0
"""Longest wait between tries of a batch the archive would not take."""
PRUNE_EVERY_S = 3600.0
"""How often an archiver removes runs past their pipeline's `archive.keep_days` (after a batch it archived)."""
_pruning: dict[int, float] = {}
"""Per archive (by id), when this process next prunes it."""
_tasks: set[asyncio.Task[None]] = set()


async def archive_batch(ctx: ServiceContext, archive: Archive, msg: Any) -> None:
    """Archive one raw batch, then ack it; nak it (to be tried again) when the write fails."""
    opened = await open_batch(msg, "raw batch", Kind.RAW)  # an unreadable one is term'ed (the transformer's too)
    if opened is None:
        return
    batch, body = opened
    with bound_contextvars(pipeline=batch.pipeline, run_id=batch.run_id, batch_id=batch.batch_id):
        # kept with its place in the log (its version), which an archived batch has no stream sequence left to tell
        with_version = placed(batch, stream_sequence(msg))
        message = msg.data if with_version is batch else encode_batch(with_version, body)
        try:
            wrote = await asyncio.to_thread(archive.put, batch.pipeline, batch.run_id, batch.part_id, message)
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
    keep = ctx.settings.archive.keep_days
    if keep and time.monotonic() >= _pruning.get(id(archive), 0.0):
        _pruning[id(archive)] = time.monotonic() + PRUNE_EVERY_S
        task = asyncio.create_task(prune(ctx, archive, keep))  # in the background: archiving goes on meanwhile
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


async def prune(ctx: ServiceContext, archive: Archive, keep_days: dict[str, float]) -> None:
    """Remove the archived runs past their pipeline's retention (several replicas may: removal is idempotent)."""
    try:
        removed = await asyncio.to_thread(archive.prune, keep_days)
    except Exception as exc:  # a failed prune is tried again at the next round; archiving is not held up
        log.warning("archive retention failed", error=f"{type(exc).__name__}: {exc}")
        return
    if removed:
        ctx.count("archived_runs_removed", len(removed))
        log.info("archived runs past their retention removed", runs=len(removed), keep_days=keep_days)
