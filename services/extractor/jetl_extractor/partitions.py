"""Partitioned extraction: plan a run's partitions (`Extractor.partitions`) and publish one `PartitionWork` per
partition for any replica to take (see the package's `handlers` for the life of a partitioned run); and, for an
extractor that confirms what a run read (`ConfirmingExtractor`: a partitioned CDC snapshot), confirm once every
partition is extracted (`confirm_when_extracted`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from jetl import subjects
from jetl.bus import Bus
from jetl.errors import JetlError
from jetl.events import RunPartitioned
from jetl.logging import get_logger
from jetl.messages.models import PartitionWork, RunRequest
from jetl.pipeline import Pipeline
from jetl.positions import cursor_of, joined_cursor
from jetl.protocols import (
    ConfirmingExtractor,
    ExtractContext,
    Extractor,
    Partition,
    PartitionedExtractor,
    keeps_cursor,
)
from jetl.state import get_run

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = get_logger("jetl.extractor")

CONFIRM_POLL_S = 0.5
"""How often the replica that planned a confirming run reads the run's state, waiting for its partitions."""

Plan = list[tuple[int, Partition | None]]
"""(extractor index, partition; None: all of that extractor)."""


async def plan_partitions(extractors: Sequence[Extractor], ectx: ExtractContext, cursor: dict[str, Any] | None) -> Plan:
    """The run's partitions. Empty or one: the run is extracted here, whole. An extractor that keeps a cursor but
    cannot plan partitions (so cannot say its cursor before extracting) keeps the run whole: the cursor must move
    exactly once, when the run completes."""
    plan: Plan = []
    for index, extractor in enumerate(extractors):
        at = replace(ectx, cursor=cursor_of(cursor, index))
        # may scan a file for line numbers, or query a table's keys; None: not partitioned as configured
        parts: list[Partition] | None = None
        if isinstance(extractor, PartitionedExtractor):
            parts = await asyncio.to_thread(extractor.partitions, at)
        if parts is None:
            if keeps_cursor(extractor):
                return []
            plan.append((index, None))
            continue
        plan.extend((index, part) for part in parts)
    return plan


async def publish_plan(
    bus: Bus,
    event_base: dict[str, Any],
    pipeline: Pipeline,
    req: RunRequest,
    plan: Plan,
    cursor: dict[str, Any] | None,
) -> None:
    """Log run.partitioned (with the cursor the run reaches once every partition is extracted) and publish one
    `PartitionWork` per partition."""
    reached = joined_cursor(pipeline.extractors)  # after `partitions`: the cursor once every partition is extracted
    await bus.event(RunPartitioned(**event_base, partitions=len(plan), cursor=reached))
    for n, (index, part) in enumerate(plan):
        work = PartitionWork(
            request=req,
            partition=f"p{n:04d}",
            extractor=index,
            spec=part.spec if part is not None else {},
            partitions=len(plan),
            cursor=cursor,
        )
        await bus.publish_work(
            work.model_dump_json().encode(),
            subjects.run_partition(pipeline.name, req.run_id, work.partition),
            work.msg_id,
        )
    log.info("run partitioned", partitions=len(plan))


async def confirm_when_extracted(kv: KeyValue | None, pipeline: Pipeline, ectx: ExtractContext) -> None:
    """Once the tracker has counted every partition of the run `ectx` extracted (every batch is on JETL_RAW), tell
    the pipeline's confirming extractors (`ConfirmingExtractor.confirm`: a snapshot's slot moves, its exported
    snapshot closes); when the run fails instead, or this replica stops, `release` them. Runs beside the consume
    loop in the replica that planned the run: the source's hold (a snapshot the partitions import) is this process's."""
    confirming = [ex for ex in pipeline.extractors if isinstance(ex, ConfirmingExtractor)]
    if not confirming:
        return
    extracted = False
    try:
        while kv is not None:
            try:
                state = await get_run(kv, pipeline.name, ectx.run_id)
            except Exception as exc:  # NATS away for a moment: the hold stays, the state is read again
                log.warning("run state unreadable; read again", error=f"{type(exc).__name__}: {exc}")
                state = None
            if state is not None and state.status == "failed":
                break
            if state is not None and (state.expected_batches is not None or state.status == "completed"):
                extracted = True
                break
            await asyncio.sleep(CONFIRM_POLL_S)
    finally:
        for extractor in confirming:
            try:
                await (extractor.confirm(ectx) if extracted else extractor.release(ectx))
            except (JetlError, OSError) as exc:  # the next run's confirm moves the source on: a warning, no more
                log.warning("source not confirmed", error=str(exc), extracted=extracted)
    log.info("partitioned run confirmed" if extracted else "partitioned run released", run_id=ectx.run_id)


async def release_all(pipeline: Pipeline, ectx: ExtractContext) -> None:
    """Release what the run `ectx`'s planning holds (its plan was not published)."""
    for extractor in pipeline.extractors:
        if isinstance(extractor, ConfirmingExtractor):
            with contextlib.suppress(JetlError, OSError):
                await extractor.release(ectx)
