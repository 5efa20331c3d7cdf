"""Partitioned extraction: plan a run's partitions (`Extractor.partitions`) and publish one `PartitionWork` per
partition for any replica to take (see the package's `handlers` for the life of a partitioned run)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from jetl import subjects
from jetl.bus import Bus
from jetl.events import RunPartitioned
from jetl.logging import get_logger
from jetl.messages.models import PartitionWork, RunRequest
from jetl.pipeline import Pipeline
from jetl.positions import cursor_of, joined_cursor
from jetl.protocols import ExtractContext, Extractor, Partition, PartitionedExtractor, keeps_cursor

log = get_logger("jetl.extractor")

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
