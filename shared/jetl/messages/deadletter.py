"""Dead letters: rejected records (or a whole batch) with the reason, as kept on JETL_DLQ, each record a typed
`DeadRecord`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict

from jetl.errors import RecordIssue
from jetl.messages.ids import Token, part_id
from jetl.messages.models import Batch, Encoding, utcnow
from jetl.messages.payload import too_large
from jetl.messages.wire import decode_records, read_records
from jetl.subjects import Stage


@with_config(ConfigDict(extra="allow"))
class DeadRecord(TypedDict, total=False):
    """One rejected record of a dead letter. Letters are built with every key but `ref`; a letter read back is
    taken as it is (an older or hand-made letter may lack some keys, or have others)."""

    index: int | None
    """Its position in the batch (None: unknown, or the records were reshaped since)."""
    origin: str | None
    """Where it came from (`file:line`), when known."""
    field: str | None
    """The field at fault, when one is."""
    message: str | None
    """Why it was rejected (None: it was read fine, and the whole batch failed)."""
    record: Any
    """The record as it came in (a JSON text that is not a record: its text); None when kept by reference."""
    ref: str
    """`<bucket>/<object>` of a record too large for a message, kept in the object store."""


OVERSIZED_RECORD = "OversizedRecord"
"""`DeadLetter.error_type` of a record larger than a message may be: its body is kept by reference (`ref`)."""


MALFORMED_INPUT = "MalformedInput"
"""`DeadLetter.error_type` of input that is not a record at all (a line that is not JSON, or not an object): only
its source can mend it, so a redrive does not take it."""


def dead_records(body: bytes, encoding: Encoding = "json") -> list[DeadRecord]:
    """A whole batch's records in DeadLetter form, so a redrive can resend them; a JSON text that is not a record is
    kept as it is, a JSON body that cannot be read at all as its text (nothing is lost), an unreadable Arrow body as
    nothing."""
    read: list[tuple[int, Any, str | None]]  # (index, record, why it is not one)
    try:
        if encoding == "json":
            records, positions, unread = read_records(body)
            read = [(i, r, None) for i, r in zip(positions or range(len(records)), records, strict=True)]
            read += [(u.position, u.value, u.reason) for u in unread]
        else:
            read = [(i, r, None) for i, r in enumerate(decode_records(body, encoding))]
    except Exception:
        if encoding != "json":
            return []
        text = body.decode(errors="replace")
        return [DeadRecord(index=None, origin=None, field=None, message="unreadable batch", record=text)]
    read.sort(key=lambda x: x[0])
    return [DeadRecord(index=i, origin=None, field=None, message=m, record=r) for i, r, m in read]


def _as_text(value: Any) -> Any:
    """A value as its JSON text (the stdlib encoder goes deeper than pydantic's), or its repr past even that."""
    import json

    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return json.dumps(value, default=str)
    except (ValueError, RecursionError, TypeError):
        return repr(value)


class DeadLetter(BaseModel):
    """Rejected records (or a whole batch) with the reason, as kept on JETL_DLQ."""

    pipeline: Token
    run_id: Token
    batch_id: str
    stage: Stage
    reason: str
    error_type: str
    records: list[DeadRecord] = Field(default_factory=list)
    """The rejected records, each with where it came from and why."""
    created_at: datetime = Field(default_factory=utcnow)
    scope: Literal["records", "batch"] = "records"
    """`records`: some records of the batch; `batch`: the whole batch could not pass the stage."""
    body_ref: str | None = None
    """`<bucket>/<object>`: the letter was too large for a message, so its records are kept in that object-store
    object (the letter as JSON) and `records` here is empty. A record too large on its own carries `ref` instead."""
    part: int = 0
    """The part of its batch a letter of a clean batch in several parts is about (`Batch.part`)."""
    parts: int = 1
    """How many parts that batch travels in (1: it is not cut)."""

    @classmethod
    def of_batch(cls, batch: Batch, body: bytes, stage: Stage, exc: BaseException) -> DeadLetter:
        """The letter of a batch that could not pass `stage` at all: all of its records, and the error."""
        return cls(
            pipeline=batch.pipeline,
            run_id=batch.run_id,
            batch_id=batch.batch_id,
            stage=stage,
            reason=f"pipeline {batch.pipeline!r}: batch {batch.batch_id}: {exc}",
            error_type=type(exc).__name__,
            scope="batch",
            records=dead_records(body, batch.encoding),
            part=batch.part,
            parts=batch.parts,
        )

    @classmethod
    def of_oversized(cls, batch: Batch, stage: Stage, kept: list[tuple[str, int, str]], limit: int) -> DeadLetter:
        """The letter of records too large for any message, each kept by reference: `kept` is (origin or "", size,
        reference) per record; `limit` the max_payload they exceed."""
        where = f" at {kept[0][0]}" if kept[0][0] else ""
        return cls(
            pipeline=batch.pipeline,
            run_id=batch.run_id,
            batch_id=batch.batch_id,
            stage=stage,
            reason=f"pipeline {batch.pipeline!r}: batch {batch.batch_id}: {len(kept)} record(s) too large for a "
            f"message; first{where}: " + too_large(kept[0][1], limit),
            error_type=OVERSIZED_RECORD,
            records=[
                DeadRecord(
                    index=None, origin=origin or None, field=None, message=too_large(size, limit), record=None, ref=ref
                )
                for origin, size, ref in kept
            ],
        )

    @classmethod
    def of_issues(cls, batch: Batch, stage: Stage, issues: list[RecordIssue], error_type: str) -> DeadLetter:
        """The letter of some records of a batch, each with its origin, field and why."""
        more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
        return cls(
            pipeline=batch.pipeline,
            run_id=batch.run_id,
            batch_id=batch.batch_id,
            stage=stage,
            reason=issues[0].describe(batch.pipeline) + more,
            error_type=error_type,
            records=[
                DeadRecord(
                    index=i.index if i.index >= 0 else None,
                    origin=i.origin,
                    field=i.field or None,
                    message=i.message,
                    record=i.record,
                )
                for i in issues
            ],
        )

    def to_json(self) -> bytes:
        """The letter as JSON. A record nested deeper than pydantic serializes (a fuzzed line of `[[[...]]]`, which
        orjson still parsed) travels as its JSON text instead, so the letter is published, never lost."""
        try:
            return self.model_dump_json().encode()
        except (ValueError, RecursionError):  # pydantic's serialization error is a ValueError
            records = [{k: _as_text(v) if k in ("record", "input") else v for k, v in r.items()} for r in self.records]
            return self.model_copy(update={"records": records}).model_dump_json().encode()

    @property
    def msg_id(self) -> str:
        """Dedup id on JETL_DLQ: a redelivered input does not dead-letter twice (a stage's unreadable input and its
        invalid records are two letters of one batch, its records too large for a message a third; each part of a
        clean batch in parts has its own)."""
        kind = {MALFORMED_INPUT: "/unreadable", OVERSIZED_RECORD: "/oversized"}.get(self.error_type, "")
        return f"{part_id(self.batch_id, self.part, self.parts)}/{self.stage}/{self.scope}{kind}"
