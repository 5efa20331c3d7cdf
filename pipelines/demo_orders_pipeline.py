"""The demo pipeline: sample orders (JSONL) -> type, column and lambda transformers -> ClickHouse.

`jetl demo` writes the input to `<data_dir>/input/orders.jsonl` and runs this pipeline once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from jetl import (
    ClickHouseLoader,
    ColumnTransformer,
    Cron,
    FileExtractor,
    JetlSettings,
    LambdaTransformer,
    LowCardinality,
    Pipeline,
    TypeTransformer,
)


class RawOrder(BaseModel):
    """An order as the shop exports it."""

    order_id: int
    customer: str
    country: str
    amount: float = Field(ge=0)
    ordered_at: datetime
    status: Literal["paid", "refunded", "test"]


class Order(BaseModel):
    """An order as it lands in ClickHouse."""

    order_id: int
    customer_id: str
    country: Annotated[str, LowCardinality()]
    amount_cents: int
    ordered_at: datetime
    status: Annotated[str, LowCardinality()]


def drop_test_orders(record: dict[str, Any]) -> dict[str, Any] | None:
    """Test orders are filtered out (they count as filtered in the ledger, not rejected)."""
    return None if record["status"] == "test" else record


def register_pipelines() -> list[Pipeline]:
    """The demo's one pipeline."""
    data_dir = JetlSettings().data_dir
    return [
        Pipeline(
            name="demo_orders",
            description="Sample shop orders into ClickHouse",
            extractors=[FileExtractor(data_dir / "input" / "*.jsonl", chunk_size=500)],
            transformers=[
                TypeTransformer(RawOrder),
                LambdaTransformer(drop_test_orders),
                ColumnTransformer(
                    rename={"customer": "customer_id"},
                    compute={"amount_cents": lambda r: round(r["amount"] * 100)},
                    drop=["amount"],
                ),
            ],
            loader=ClickHouseLoader("demo_orders", order_by=["order_id"]),
            schema=Order,
            schedule=Cron("0 * * * *", paused=True),
            batch_size=500,
        )
    ]
