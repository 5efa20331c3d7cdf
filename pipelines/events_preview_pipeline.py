"""Example: preview application events (JSONL, plain, .gz or .zst) on the console.

Drop files into `<data_dir>/input/events/`; each batch prints as a table on a terminal and as JSON lines when the
output is piped (`jetl ... | jq`), at most 20 rows per batch. Importing the module reads nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from jetl import (
    ColumnTransformer,
    ConsoleLoader,
    FileExtractor,
    FilterTransformer,
    JetlSettings,
    Pipeline,
    TypeTransformer,
)


class RawEvent(BaseModel):
    """An event as the application logs it."""

    event: str
    user_id: int
    at: datetime
    properties: dict[str, Any] = {}


class Event(BaseModel):
    """What the preview shows."""

    at: datetime
    event: str
    user_id: int
    page: str | None = None


def register_pipelines() -> list[Pipeline]:
    """One pipeline: JSONL events -> typed, health checks dropped, flattened -> console."""
    data_dir = JetlSettings().data_dir
    return [
        Pipeline(
            name="events_preview",
            description="Application events (JSONL) previewed on the console",
            extractors=[FileExtractor(data_dir / "input" / "events" / "*.jsonl*", chunk_size=1_000)],
            transformers=[
                TypeTransformer(RawEvent),
                FilterTransformer(lambda r: r["event"] != "healthcheck", name="not_healthcheck"),
                ColumnTransformer(
                    compute={"page": lambda r: r["properties"].get("page")},
                    select=["at", "event", "user_id", "page"],
                ),
            ],
            loader=ConsoleLoader(style="auto", max_rows=20),
            schema=Event,
            batch_size=1_000,
        )
    ]
