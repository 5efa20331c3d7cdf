"""The benchmark's reference job into PostgreSQL (`bench/postgres.py`): the same extractor and transformers as
`bench/pipelines/bench_pipeline.py`, a `PostgresLoader` instead of chdb. Its own folder, since the chdb pipelines
allow one loader process and this one is run with several. `BENCH_PG_DSN` and `BENCH_PG_SCHEMA` say where."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from jetl import ColumnTransformer, FileExtractor, JetlSettings, Pipeline, PostgresLoader, TypeTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))
from bench_pipeline import BATCH, COMPUTE, RawOrder


class Order(BaseModel):
    """One row of `bench_orders` (the country as plain text: PostgreSQL has no LowCardinality)."""

    id: int
    ts: datetime
    user_id: str
    amount: float
    country: str
    amount_cents: int


def register_pipelines() -> list[Pipeline]:
    """The throughput job into PostgreSQL."""
    data_dir = JetlSettings().data_dir
    dsn = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    schema = os.environ.get("BENCH_PG_SCHEMA", "jetl_bench")

    def job(name: str, path: Path, table: str, batch: int = BATCH) -> Pipeline:
        return Pipeline(
            name=name,
            description="Throughput benchmark: JSONL orders into PostgreSQL",
            extractors=[FileExtractor(path, chunk_size=batch)],
            transformers=[
                TypeTransformer(RawOrder),
                ColumnTransformer(rename={"user": "user_id"}, compute={"amount_cents": COMPUTE}, drop=["payload"]),
            ],
            loader=PostgresLoader(table, dsn=dsn, schema=schema),
            schema=Order,
            batch_size=batch,
        )

    # the warm-up job: the same work on a few records first, so no timed run pays a service's one-time costs
    return [
        job("bench_pg", data_dir / "input" / "orders.jsonl", "bench_orders"),
        job("bench_pg_warm", data_dir / "warm" / "orders.jsonl", "bench_warm", batch=2000),
    ]
