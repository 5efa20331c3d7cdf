"""A pipeline's schema drift, summed from the `schema.drift` events its transformers published: per drifted field
(new, missing, changed type), how many records and batches showed it, an example, and the first and last batch that
did. `jetl schema diff` prints it; `jetl status` and `jetl audit` name the drifted fields of a run.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from jetl.eventlog import read_events
from jetl.events import SchemaDrift

if TYPE_CHECKING:
    from jetl.ops.client import JetlClient


class FieldDrift(BaseModel):
    """One drifted field of a pipeline, over every batch that showed it."""

    kind: str
    path: str
    expected: str
    seen: str
    records: int
    """Records that showed it, of those looked at (a clean batch is sampled: its first and last record)."""
    batches: int
    runs: list[str]
    example: str
    first_batch: str
    first_at: datetime
    last_batch: str
    last_at: datetime


def drift_summary(events: list[SchemaDrift]) -> list[FieldDrift]:
    """The drift events of a pipeline summed per field, in log order of first sight."""
    out: dict[tuple[str, str, str], FieldDrift] = {}
    for ev in events:
        for f in ev.fields:
            key = (f.kind, f.path, f.seen)
            d = out.get(key)
            if d is None:
                out[key] = FieldDrift(
                    kind=f.kind,
                    path=f.path,
                    expected=f.expected,
                    seen=f.seen,
                    records=f.count,
                    batches=1,
                    runs=[ev.run_id],
                    example=f.example,
                    first_batch=ev.batch_id,
                    first_at=ev.at,
                    last_batch=ev.batch_id,
                    last_at=ev.at,
                )
                continue
            d.records += f.count
            d.batches += 1
            if ev.run_id not in d.runs:
                d.runs.append(ev.run_id)
            if ev.at >= d.last_at:
                d.last_batch, d.last_at = ev.batch_id, ev.at
    return list(out.values())


async def schema_drift(jc: JetlClient, pipeline: str, run_id: str | None = None) -> list[FieldDrift]:
    """A pipeline's drift (one run's, with `run_id`), read from the event log."""
    events = [ev async for ev in read_events(jc.conn, pipeline, run_id) if isinstance(ev, SchemaDrift)]
    return drift_summary(events)


def drift_json(fields: list[FieldDrift]) -> list[dict[str, Any]]:
    """The summary as JSON values."""
    return [f.model_dump(mode="json") for f in fields]
