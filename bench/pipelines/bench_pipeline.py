"""The benchmark's reference job as a jetl pipeline: JSONL file -> type -> column -> ClickHouse (chdb).

`bench/run.py` passes this folder as the pipelines folder of the embedded stack, so the pipeline is not part of
the repository's `pipelines/`. The input is `<data_dir>/input/orders.jsonl` (the benchmark writes it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel

from jetl import (
    ClickHouseLoader,
    ColumnTransformer,
    FileExtractor,
    JetlSettings,
    LowCardinality,
    Pipeline,
    TypeTransformer,
)

BATCH = 40_000
"""Records per batch: ~155 bytes a JSONL line, so a raw batch is ~6 MB, under the embedded server's 8 MB."""


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


def register_pipelines() -> list[Pipeline]:
    """The throughput job and its 100-record twin for latency."""
    data_dir = JetlSettings().data_dir
    return [
        Pipeline(
            name="bench_orders",
            description="Throughput benchmark: 1M JSONL orders into ClickHouse",
            extractors=[FileExtractor(data_dir / "input" / "orders.jsonl", chunk_size=BATCH)],
            transformers=[
                TypeTransformer(RawOrder),
                ColumnTransformer(rename={"user": "user_id"}, compute={"amount_cents": amount_cents},
                                  drop=["payload"]),
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
                ColumnTransformer(rename={"user": "user_id"}, compute={"amount_cents": amount_cents},
                                  drop=["payload"]),
            ],
            loader=ClickHouseLoader("bench_latency", order_by=["id"]),
            schema=Order,
            batch_size=BATCH,
        ),
    ]
