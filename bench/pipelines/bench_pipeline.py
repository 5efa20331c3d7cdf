"""The benchmark's reference job as a jetl pipeline: JSONL file -> type -> column -> ClickHouse (chdb).

`bench/run.py` passes this folder as the pipelines folder of the embedded stack, so the pipeline is not part of
the repository's `pipelines/`. The input is `<data_dir>/input/orders.jsonl` (the benchmark writes it).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel

from jetl import (
    ArrowExpression,
    ClickHouseLoader,
    ColumnTransformer,
    FileExtractor,
    JetlSettings,
    LowCardinality,
    Pipeline,
    TypeTransformer,
)

BATCH = int(os.environ.get("BENCH_BATCH", "30000"))
"""Records per batch (`BENCH_BATCH` overrides it). ~155 bytes a JSONL line: 30k lines are ~4.7 MB of raw batch (the
embedded server's max_payload is 8 MB). Measured on 1M records, CPU of all processes / transformer peak RSS:
20k 14.0 s / 207 MB, 30k 13.9 s / 229 MB, 40k 12.7 s / 248 MB (bigger batches: fewer parts for chdb to merge,
fewer events to fold; but 40k leaves the transformer no room under its 250 MB)."""
PARTITION_BYTES = int(os.environ.get("BENCH_PARTITION_BYTES", str(128 << 20)))
"""Byte ranges the input splits into for extractor replicas (`bench/run.py --sweep extractor=2` sets it so that each
replica gets a share of the input)."""


class RawOrder(BaseModel):
    """One input line, typed."""

    id: int
    ts: datetime
    user: str
    amount: float
    country: str
    payload: str


class Order(BaseModel):
    """One row of `bench_orders`."""

    id: int
    ts: datetime
    user_id: str
    amount: float
    country: Annotated[str, LowCardinality()]
    amount_cents: int


def amount_cents(record: dict[str, object]) -> int:
    """Amount in cents, rounded half to even (Python's round)."""
    return round(record["amount"] * 100)  # type: ignore[operator]


AMOUNT_CENTS = ArrowExpression(
    lambda pc, pa: pc.round(pc.multiply(pc.field("amount"), 100), round_mode="half_to_even").cast(pa.int64())
)
"""The same column as an Arrow expression: one definition both of the transformer's paths evaluate over a batch,
which lets a batch stay an Arrow table from the raw JSON to the loader (`jetl.transformers.chain.arrow_path`).
Built where it is evaluated (the transformer): the other services load this module without importing pyarrow."""

COMPUTE = amount_cents if os.environ.get("BENCH_COMPUTE") == "python" else AMOUNT_CENTS
"""`BENCH_COMPUTE=python` computes `amount_cents` with the Python function instead (records as dicts: the pydantic
path), for comparison."""


def register_pipelines() -> list[Pipeline]:
    """The throughput job and its 100-record twin for latency."""
    data_dir = JetlSettings().data_dir
    return [
        Pipeline(
            name="bench_orders",
            description="Throughput benchmark: 1M JSONL orders into ClickHouse",
            extractors=[
                FileExtractor(data_dir / "input" / "orders.jsonl", chunk_size=BATCH, partition_bytes=PARTITION_BYTES)
            ],
            transformers=[
                TypeTransformer(RawOrder),
                ColumnTransformer(rename={"user": "user_id"}, compute={"amount_cents": COMPUTE}, drop=["payload"]),
            ],
            loader=ClickHouseLoader("bench_orders", order_by=["id"]),
            schema=Order,
            batch_size=BATCH,
        ),
        Pipeline(
            name="bench_latency",
            description="Latency benchmark: the same job, 100 records a run",
            extractors=[FileExtractor(data_dir / "latency" / "orders.jsonl", chunk_size=BATCH)],
            transformers=[
                TypeTransformer(RawOrder),
                ColumnTransformer(rename={"user": "user_id"}, compute={"amount_cents": COMPUTE}, drop=["payload"]),
            ],
            loader=ClickHouseLoader("bench_latency", order_by=["id"]),
            schema=Order,
            batch_size=BATCH,
        ),
    ]
