"""Example: sensor readings from CSV files (plain, .gz or .zst) to Parquet, partitioned by day.

Drop files into `<data_dir>/input/readings/`; the run writes `<data_dir>/output/sensor_readings/day=YYYY-MM-DD/...`
Parquet parts (readable with `pyarrow.dataset(..., partitioning="hive")` or DuckDB). Nothing is read or created
when the module is imported: a missing input folder is an error only when a run executes.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from jetl import (
    ColumnTransformer,
    Cron,
    DedupeTransformer,
    FileExtractor,
    FileLoader,
    FilterTransformer,
    JetlSettings,
    Pipeline,
    TypeTransformer,
)


class RawReading(BaseModel):
    """A reading as the gateway exports it (CSV: every value arrives as text)."""

    sensor_id: str
    taken_at: datetime
    temperature_c: Decimal = Field(max_digits=6, decimal_places=2)
    humidity_pct: float | None = None
    status: Literal["ok", "degraded", "calibrating"]


class Reading(BaseModel):
    """A reading as it lands in the Parquet parts."""

    sensor_id: str
    taken_at: datetime
    day: date
    temperature_c: Decimal = Field(max_digits=6, decimal_places=2)
    humidity_pct: float | None = None
    degraded: bool


def is_usable(record: dict[str, Any]) -> bool:
    """Calibration readings are noise: filtered out (counted as filtered, not rejected)."""
    return bool(record["status"] != "calibrating")


def register_pipelines() -> list[Pipeline]:
    """One pipeline: CSV readings -> typed, filtered, deduplicated -> Parquet by day."""
    data_dir = JetlSettings().data_dir
    return [
        Pipeline(
            name="sensor_readings",
            description="Sensor readings (CSV) into day-partitioned Parquet",
            extractors=[
                # csv_types: an empty humidity cell becomes None (CSV has no null); the rest stays text for the model
                FileExtractor(data_dir / "input" / "readings" / "*.csv*", csv_types={"humidity_pct": float})
            ],
            transformers=[
                TypeTransformer(RawReading),
                FilterTransformer(is_usable),
                DedupeTransformer(key=["sensor_id", "taken_at"], keep="last"),  # a gateway resends the last rows
                ColumnTransformer(
                    compute={
                        "day": lambda r: r["taken_at"].date(),
                        "degraded": lambda r: r["status"] == "degraded",
                    },
                    drop=["status"],
                ),
            ],
            loader=FileLoader(data_dir / "output", format="parquet", partition_by="day"),
            schema=Reading,
            schedule=Cron("*/15 * * * *", paused=True),
            batch_size=5_000,
        )
    ]
