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
    from jetl.messages.models import RunRequest
    from jetl.ops.client import JetlClient
    from jetl.pipeline import Pipeline


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


HELD = "SchemaFrozen"
"""The error type of a batch a freeze contract (or evolve, for drift it does not change) held whole."""


def held_refusal(pipeline: Pipeline, records: list[Any]) -> str | None:
    """Why the pipeline as it is now would hold a held batch's records again (None: it takes them): drift from its
    input model of a field under freeze; under evolve, drift evolve does not change."""
    import orjson

    from jetl.errors import SchemaFrozen
    from jetl.evolution import evolution_of
    from jetl.transformers.drift import DriftFinder
    from jetl.transformers.shape import model_shape

    model = pipeline.input_model()
    contract = pipeline.contract
    if model is None or contract is None:
        return None
    finder = DriftFinder(model_shape(*model))
    for r in records:
        if isinstance(r, str):
            try:
                r = orjson.loads(r)
            except orjson.JSONDecodeError:
                continue
        finder.check(r)
    fields = finder.fields()
    if contract.default != "evolve":  # the fields under freeze (all of them under a pipeline-wide freeze)
        return "; ".join(f"{f.kind} field {f.path!r}" for f in fields if contract.mode_of(f.path) == "freeze") or None
    try:
        evolution_of(pipeline.schema, fields, tuple(pipeline.primary_key))
    except SchemaFrozen as exc:
        return str(exc)
    return None


async def accept_held(
    jc: JetlClient, pipeline: Pipeline, *, run_id: str | None = None
) -> tuple[list[int], list[tuple[int, str]], RunRequest | None]:
    """Release the batches a schema contract held (`SchemaFrozen` dead letters, of one run or all) once the pipeline
    as it is now takes them: a redrive of exactly those letters (`JetlClient.request_redrive`), not a path of its
    own. Returns (the letters released, the letters refused with why, the redrive's request). Nothing is released
    while any is refused: accepting half a model's drift would load the run in an order no source sent."""
    from jetl.ops.redrive import redrivable

    letters = await jc.dead_letter_log(pipeline.name)
    runs = await jc.runs(pipeline.name)
    free = set(redrivable(letters, runs, run_id=run_id))
    held = [(seq, dl) for seq, dl in letters if dl.error_type == HELD and seq in free]
    refused = [(seq, why) for seq, dl in held if (why := held_refusal(pipeline, [r.get("record") for r in dl.records]))]
    seqs = [seq for seq, _ in held]
    if refused or not seqs:
        return ([] if refused else seqs), refused, None
    request = await jc.request_redrive(pipeline.name, seqs=seqs, code_hash=pipeline.code_hash)
    return seqs, [], request
