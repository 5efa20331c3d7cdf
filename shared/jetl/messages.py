"""The messages that travel between services: run requests, batches and dead letters.

A batch travels as one NATS message: the JSON envelope on the first line, then the records, encoded as a
JSON array (`encoding="json"`). Splitting the envelope from the records keeps the records as bytes until a
stage needs them, so a whole batch is validated in one `TypeAdapter.validate_json` call. Clean batches bound for a
loader that takes Arrow, of a schema of bare typed fields, travel as Arrow IPC instead (`encoding="arrow"`, see
`jetl._internal.records`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from jetl.errors import ConfigError
from jetl.subjects import Stage, check_token

Encoding = Literal["json", "arrow"]
Trigger = Literal["manual", "schedule", "backfill", "replay", "redrive"]


def utcnow() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(UTC)


def _default(obj: Any) -> Any:
    from decimal import Decimal

    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """orjson with the few types it lacks (Decimal, models, sets)."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


class RunRequest(BaseModel):
    """Ask the extractor to run one pipeline once, for one data interval."""

    pipeline: str
    run_id: str
    trigger: Trigger = "manual"
    requested_at: datetime = Field(default_factory=utcnow)
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    parent_run_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    force: bool = False
    replay_of: str | None = None
    """Replay: re-publish that run's raw batches (kept on JETL_RAW) under this run id instead of extracting."""
    shadow: bool = False
    """Load into the destination's shadow (a side table or folder per run), never the real one (`replay --diff`)."""
    redrive: list[int] = Field(default_factory=list)
    """Redrive: the JETL_DLQ stream sequences whose records this run sends back through, instead of extracting."""

    def model_post_init(self, __context: Any) -> None:
        check_token(self.pipeline, "pipeline")
        check_token(self.run_id, "run id")
        if self.replay_of is not None:
            check_token(self.replay_of, "replayed run id")
        if self.replay_of is not None and self.redrive:
            raise ConfigError("a run replays a run or redrives dead letters, not both")
        if self.shadow and self.replay_of is None:
            raise ConfigError("shadow loading is for replays (it is diffed against the replayed run)")


class Batch(BaseModel):
    """Envelope of one batch of records: who made it, from where, under which schema."""

    pipeline: str
    run_id: str
    seq: int
    schema_name: str
    schema_hash: str
    count: int
    encoding: Encoding = "json"
    created_at: datetime = Field(default_factory=utcnow)
    source_position: dict[str, Any] | None = None
    origins: list[str] | None = None
    """Per record, where it came from (`file:line`), when the extractor knows."""
    origin_runs: list[tuple[str, int, int]] | None = None
    """`origins` as they travel when they compress: runs of (prefix, first number, count), i.e. prefix + number."""
    shadow: bool = False
    """Load into the destination's shadow for this run (a replay with --diff), never the real destination."""
    supersedes: str | None = None
    """A replayed batch: the parent run's batch it replaces in the destination (whose rows the loader removes)."""

    @property
    def batch_id(self) -> str:
        """Deterministic: re-extracting after a crash yields the same ids, so publishes dedup."""
        return batch_id(self.run_id, self.seq)

    def origin(self, index: int) -> str | None:
        """Where record `index` of this batch came from."""
        if self.origins is not None and 0 <= index < len(self.origins):
            return self.origins[index]
        if self.origin_runs is not None and index >= 0:
            for prefix, first, count in self.origin_runs:
                if index < count:
                    return f"{prefix}{first + index}"
                index -= count
        return None


def batch_id(run_id: str, seq: int) -> str:
    """`<run_id>/<seq>`, zero-padded so ids sort in order."""
    return f"{run_id}/{seq:06d}"


_TRAILING_NUMBER = re.compile(r"(.*?)(0|[1-9][0-9]*)")


def compact_origins(origins: list[str]) -> list[tuple[str, int, int]] | None:
    """Origins that differ by a trailing counter (`f.jsonl:1`, `f.jsonl:2`, ...) as runs of (prefix, first, count);
    None when they do not shrink to an eighth.

    40k `file:line` origins are ~2.6 MB of envelope (a 40k-line batch of the benchmark is ~6 MB of records, the
    embedded server's max_payload 8 MB); as runs, a few dozen bytes. Checking costs ~0.15 us an origin.
    """
    runs: list[tuple[str, int, int]] = []
    limit = max(1, len(origins) // 8)
    prefix, first, count = "", 0, 0
    for origin in origins:
        if count and origin == f"{prefix}{first + count}":
            count += 1
            continue
        m = _TRAILING_NUMBER.fullmatch(origin)
        if m is None:
            return None
        if count:
            runs.append((prefix, first, count))
            if len(runs) >= limit:
                return None
        prefix, first, count = m.group(1), int(m.group(2)), 1
    if count:
        runs.append((prefix, first, count))
    return runs


def encode_batch(batch: Batch, records: list[Any] | bytes) -> bytes:
    """One NATS payload: envelope line + records (already-encoded JSON array bytes are used as they are)."""
    body = records if isinstance(records, bytes) else dumps(records)
    if batch.origins is not None and len(batch.origins) >= 16:
        runs = compact_origins(batch.origins)
        if runs is not None:
            batch = batch.model_copy(update={"origins": None, "origin_runs": runs})
    return batch.model_dump_json().encode() + b"\n" + body


def decode_batch(payload: bytes) -> tuple[Batch, bytes]:
    """Split a payload into its envelope and the still-encoded records."""
    head, sep, body = payload.partition(b"\n")
    if not sep:
        from jetl.errors import TerminalError

        raise TerminalError("malformed batch message: no envelope line")
    return Batch.model_validate_json(head), body


def decode_records(body: bytes, encoding: Encoding = "json") -> list[dict[str, Any]]:
    """The records of a batch as dicts."""
    if encoding == "arrow":
        from jetl._internal.records import from_ipc

        rows: list[dict[str, Any]] = from_ipc(body).to_pylist()
        return rows
    records: list[dict[str, Any]] = orjson.loads(body)
    return records


def dead_records(body: bytes, encoding: Encoding = "json") -> list[dict[str, Any]]:
    """A whole batch's records in DeadLetter form, so a redrive can resend them; a JSON body that cannot be read
    is kept as its text (nothing is lost), an unreadable Arrow body as nothing."""
    try:
        return [
            {"index": i, "origin": None, "field": None, "message": None, "record": r}
            for i, r in enumerate(decode_records(body, encoding))
        ]
    except Exception:
        if encoding != "json":
            return []
        text = body.decode(errors="replace")
        return [{"index": None, "origin": None, "field": None, "message": "unreadable batch", "record": text}]


class DeadLetter(BaseModel):
    """Rejected records (or a whole batch) with the reason, as kept on JETL_DLQ."""

    pipeline: str
    run_id: str
    batch_id: str
    stage: Stage
    reason: str
    error_type: str
    records: list[dict[str, Any]] = Field(default_factory=list)
    """Each: {"index", "origin", "field", "message", "record"}."""
    created_at: datetime = Field(default_factory=utcnow)
    scope: Literal["records", "batch"] = "records"
    """`records`: some records of the batch; `batch`: the whole batch could not pass the stage."""

    @property
    def msg_id(self) -> str:
        """Dedup id on JETL_DLQ: a redelivered input does not dead-letter twice."""
        return f"{self.batch_id}/{self.stage}/{self.scope}"
