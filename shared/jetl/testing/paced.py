"""A paced pipeline for fault tests: every stage takes its time, so a run lasts a few seconds and a fault injected
while it is under way (a SIGKILL, a NATS node's death, a network cut) lands with some but not all batches through.
"""

from __future__ import annotations

from pathlib import Path

_SOURCE = """
import asyncio
import time
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, Pipeline

PACE = {pace}

class Row(BaseModel):
    id: int
    name: str

class Paced:
    '''A FileExtractor that takes its time, so a run is still extracting when the fault comes.'''

    def __init__(self, inner):
        self.inner = inner

    async def extract(self, ctx):
        async for chunk in self.inner.extract(ctx):
            await asyncio.sleep(PACE)
            yield chunk

{partition_methods}    def next_cursor(self):
        return self.inner.next_cursor()

    def check(self, settings):
        return self.inner.check(settings)

class Slow:
    def transform(self, records):
        time.sleep(PACE)
        return records

class SlowClickHouse(ClickHouseLoader):
    def load(self, records, ctx):
        n = super().load(records, ctx)
        time.sleep(PACE)  # after the insert: a kill here leaves rows written but the batch unacked
        return n

def register_pipelines():
    extractor = Paced(FileExtractor("{inputs}/*.jsonl", chunk_size={batch}{partition_arg}))
    return [Pipeline(name="{name}", extractors=[extractor],
                     transformers=[Slow()], loader=SlowClickHouse("{name}", order_by=["id"]), schema=Row,
                     batch_size={batch})]
"""

_PARTITION_METHODS = """    def partitions(self, ctx):
        return self.inner.partitions(ctx)

    async def extract_partition(self, ctx, partition):
        async for chunk in self.inner.extract_partition(ctx, partition):
            await asyncio.sleep(PACE)
            yield chunk

"""


def write_paced_pipeline(
    pipelines_dir: Path, name: str, inputs: Path, batch: int, pace: float = 0.03, partition_bytes: int | None = None
) -> Path:
    """Write `<name>_pipeline.py`: `{"id": int, "name": str}` lines from `inputs/*.jsonl` into the ClickHouse table
    `name` (ordered by id), in batches of `batch`, each stage sleeping `pace` seconds per batch. With
    `partition_bytes`, files are split into byte ranges that extractor replicas share."""
    path = pipelines_dir / f"{name}_pipeline.py"
    path.write_text(
        _SOURCE.format(
            name=name,
            inputs=inputs,
            batch=batch,
            pace=pace,
            partition_methods=_PARTITION_METHODS if partition_bytes else "",
            partition_arg=f", partition_bytes={partition_bytes}" if partition_bytes else "",
        )
    )
    return path
