"""A pipeline's schema drift, summed from the `schema.drift` events its transformers published: per drifted field
(new, missing, changed type), how many records and batches showed it, an example, and the first and last batch that
did. `jetl schema diff` prints it; `jetl status` and `jetl audit` name the drifted fields of a run.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from jetl.eventlog import read_stream
from jetl.events import SchemaDrift, read_event
from jetl.subjects import Kind, pattern

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


class DriftReport(BaseModel):
    """A pipeline's (or run's) drift, and what its schema contract discarded for it."""

    fields: list[FieldDrift]
    discarded_rows: int
    """Records a discard_row contract dropped (its runs' ledgers count them filtered)."""
    discarded_values: int
    """Values a discard_value contract dropped from records it kept."""


def drift_report(events: list[SchemaDrift]) -> DriftReport:
    """The drift events of a pipeline or run, summed."""
    return DriftReport(
        fields=drift_summary(events),
        discarded_rows=sum(ev.discarded_rows for ev in events),
        discarded_values=sum(ev.discarded_values for ev in events),
    )


async def schema_drift(jc: JetlClient, pipeline: str, run_id: str | None = None) -> DriftReport:
    """A pipeline's drift (one run's, with `run_id`), read from the event log: the transformers' events only."""
    subject = pattern(Kind.EVENTS, pipeline, run_id, role="transformer")
    read = [read_event(m.subject, m.data) async for m in read_stream(jc.conn, Kind.EVENTS, subject)]
    return drift_report([ev for ev in read if isinstance(ev, SchemaDrift)])


def drift_json(report: DriftReport) -> dict[str, Any]:
    """The report as JSON values: `drift` (one entry a field), `discarded_rows`, `discarded_values`."""
    return {
        "drift": [f.model_dump(mode="json") for f in report.fields],
        "discarded_rows": report.discarded_rows,
        "discarded_values": report.discarded_values,
    }
