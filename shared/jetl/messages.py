"""The messages that travel between services: run requests, batches and dead letters.

A batch travels as one NATS message: the JSON envelope on the first line, then the records, encoded as a
JSON array (`encoding="json"`). Splitting the envelope from the records keeps the records as bytes until a
stage needs them, so a whole batch is validated in one `TypeAdapter.validate_json` call. Clean batches bound for a
loader that takes Arrow, of a schema of bare typed fields, travel as Arrow IPC instead (`encoding="arrow"`, see
`jetl.records`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import AfterValidator, BaseModel, Field

from jetl.errors import ConfigError, RecordIssue, TerminalError
from jetl.subjects import Stage, check_token

Encoding = Literal["json", "arrow"]
_BATCH_ID = re.compile(r"^[A-Za-z0-9_\-]+/(?:[A-Za-z0-9_\-]+/)?[0-9]+$")


def _token(value: str) -> str:
    try:
        return check_token(value, "id")
    except ConfigError as exc:  # a ValueError inside a model: pydantic reports it against the field
        raise ValueError(str(exc)) from None


def check_batch_id(value: str) -> str:
    """Return `value` if it is a batch id (`<run id>/[<partition>/]<digits>`, tokens, never a path), else raise
    ConfigError."""
    if not _BATCH_ID.match(value):
        raise ConfigError(f"batch id {value!r} is not '<run id>/[<partition>/]<sequence number>'")
    return value


def _batch_id(value: str) -> str:
    try:
        return check_batch_id(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


Token = Annotated[str, AfterValidator(_token)]
"""A pipeline name or run id as received: a subject token (letters, digits, `_`, `-`), so never a path."""
BatchId = Annotated[str, AfterValidator(_batch_id)]
"""A batch id as received: `<run id>/[<partition>/]<sequence number>`."""
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
    redrive: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    """Redrive: the JETL_DLQ stream sequences whose records this run sends back through, instead of extracting."""

    def model_post_init(self, __context: Any) -> None:
        check_token(self.pipeline, "pipeline")
        check_token(self.run_id, "run id")
        if self.replay_of is not None:
            check_token(self.replay_of, "replayed run id")
        if self.parent_run_id is not None:
            check_token(self.parent_run_id, "parent run id")
        if self.replay_of is not None and self.redrive:
            raise ConfigError("a run replays a run or redrives dead letters, not both")
        if self.shadow and self.replay_of is None:
            raise ConfigError("shadow loading is for replays (it is diffed against the replayed run)")


class Batch(BaseModel):
    """Envelope of one batch of records: who made it, from where, under which schema.

    Its ids are checked on receipt (`decode_batch`): they name subjects, folders and tables downstream.
    """

    pipeline: Token
    run_id: Token
    seq: int = Field(ge=0)
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
    supersedes: BatchId | None = None
    """A replayed batch: the parent run's batch it replaces in the destination (whose rows the loader removes)."""
    partition: str | None = None
    """The partition of the run that made it (a subject token), when the run's extraction was partitioned; `seq`
    then counts within that partition."""
    part: int = Field(default=0, ge=0)
    """Which part of its batch this message carries, when a clean batch was too large for one message and travels
    in `parts` messages (cut in order by the transformer); its records are `count` of the batch's."""
    parts: int = Field(default=1, ge=1)
    """How many messages the batch travels in (1: the whole batch in this one)."""
    version: int | None = Field(default=None, ge=0)
    """Where the batch's records stand in the source's log: the version of its first record (record i has version +
    i), set by the transformer from the raw batch's JETL_RAW sequence (`jetl.protocols.log_version`). A replay keeps
    its parent's (so it never outranks a later run's rows), a redelivery its own; None: not known (every record 0)."""

    def model_post_init(self, __context: Any) -> None:
        if self.partition is not None:
            check_token(self.partition, "partition")
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of a batch in {self.parts} part(s)")

    @property
    def batch_id(self) -> str:
        """Deterministic: re-extracting after a crash yields the same ids, so publishes dedup."""
        return batch_id(self.run_id, self.seq, self.partition)

    @property
    def part_id(self) -> str:
        """The id of this message's records: its `Nats-Msg-Id` and the destination's dedup token (`part_id`)."""
        return part_id(self.batch_id, self.part, self.parts)

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


def batch_id(run_id: str, seq: int, partition: str | None = None) -> str:
    """`<run_id>/<seq>`, or `<run_id>/<partition>/<seq>` for a partitioned run; zero-padded so ids sort in order."""
    if partition is not None:
        return f"{run_id}/{partition}/{seq:06d}"
    return f"{run_id}/{seq:06d}"


def part_id(batch_id: str, part: int = 0, parts: int = 1) -> str:
    """The batch id, or `<batch id>/part<k>` for part k of a batch that travels in several messages: each part is
    published and written once, while the batch keeps its id (ledger, lineage, supersedes)."""
    return batch_id if parts <= 1 else f"{batch_id}/part{part}"


def split_batch_id(batch_id: str) -> tuple[str, str]:
    """(run id, the rest as one file-name-safe token): `r/000003` -> (r, 000003), `r/p0001/000003` -> (r,
    p0001-000003). Run ids and partitions are subject tokens, so the first `/` ends the run id."""
    run, _, rest = batch_id.partition("/")
    for token in (run, *rest.split("/")):
        check_token(token, f"batch id {batch_id!r} part")  # never a path: `..` or `/` would leave a folder
    return run, rest.replace("/", "-")


class PartitionWork(BaseModel):
    """One partition of a run's extraction, published by the extractor that planned the run to
    `jetl.run.<pipeline>.<run>.<partition>`, for any extractor replica to take (the same durable as run requests).

    Extracting it again (a crash, a redelivery) makes the same batches with the same ids: the planner fixed what the
    partition covers (`spec`), and the cursor every partition starts from.
    """

    kind: Literal["partition"] = "partition"
    request: RunRequest
    partition: str
    """The run's partition token (`p0000`, ...): in its subject and its batch ids."""
    extractor: int
    """Which of the pipeline's extractors reads it (its index)."""
    spec: dict[str, Any] = Field(default_factory=dict)
    """What the extractor's `partitions()` said this partition covers (a file, a byte range, a key range, ...)."""
    partitions: int
    """How many partitions the run has in all."""
    cursor: dict[str, Any] | None = None
    """The cursor the run started from (every partition reads from the same one)."""

    def model_post_init(self, __context: Any) -> None:
        check_token(self.partition, "partition")
        if not self.extractor >= 0 or self.partitions < 1:
            raise ConfigError("a partition names an extractor index >= 0 of a run of at least one partition")

    @property
    def msg_id(self) -> str:
        """Dedup id on JETL_RUNS: a planner that plans again publishes no second copy."""
        return f"partition/{self.request.run_id}/{self.partition}"


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
    """One NATS payload: envelope line + records (dicts or JSON texts, see `encode_records`; an already-encoded JSON
    array is used as it is)."""
    body = records if isinstance(records, bytes) else encode_records(records)
    if batch.origins is not None and len(batch.origins) >= 16:
        runs = compact_origins(batch.origins)
        if runs is not None:
            batch = batch.model_copy(update={"origins": None, "origin_runs": runs})
    return batch.model_dump_json().encode() + b"\n" + body


def decode_batch(payload: bytes) -> tuple[Batch, bytes]:
    """Split a payload into its envelope and the still-encoded records."""
    head, sep, body = payload.partition(b"\n")
    if not sep:
        raise TerminalError("malformed batch message: no envelope line")
    return Batch.model_validate_json(head), body


RAW_SEPARATOR = b"\n,"
"""What joins a batch's JSON texts when it carries them unparsed (`Chunk.raw`, `encode_records`). A JSON text of one
line holds no line break (inside a string it is escaped), so a body that does not read as a whole, because one
text is malformed, still splits back into its texts (`read_records`)."""


class Unread(NamedTuple):
    """A JSON text of a batch that is not a record: where it stood, why, and what it held (the value, or the text
    itself when it is not JSON)."""

    position: int
    reason: str
    value: Any


def encode_records(items: Sequence[Any]) -> bytes:
    """A batch's JSON array, from records given as dicts or as JSON texts not yet parsed (`Chunk.raw`, bytes): the
    texts go in as they are, joined by RAW_SEPARATOR; records without any text are encoded in one orjson call."""
    try:  # all texts or all records: one C call either way (a mix raises TypeError in both)
        if items and type(items[0]) is bytes:
            return b"[" + RAW_SEPARATOR.join(items) + b"]"
        return dumps(items if isinstance(items, list) else list(items))
    except TypeError:
        return b"[" + RAW_SEPARATOR.join(x if type(x) is bytes else dumps(x) for x in items) + b"]"


def read_records(body: bytes, count: int | None = None) -> tuple[list[dict[str, Any]], list[int] | None, list[Unread]]:
    """The records of a JSON batch that holds `count` (None: whatever it holds), for a stage that parses what an
    extractor passed on unparsed: (the records, the position each held in the batch when some were not records
    (else None), and for each of those its position, why, and its text).

    One orjson call when the body reads as `count` JSON objects. Otherwise, a JSON text at a time: a body that does
    not read at all is split at RAW_SEPARATOR, and each text that is not one JSON object is set aside with the
    reason. Raises TerminalError when the body does not even split into `count` texts.
    """
    parsed: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
    if isinstance(parsed, list) and (count is None or len(parsed) == count):
        if all(type(r) is dict for r in parsed):
            return parsed, None, []
        values: list[tuple[Any, str | None]] = [(v, None) for v in parsed]
    else:
        texts = body.strip()
        if texts[:1] != b"[" or texts[-1:] != b"]":
            raise TerminalError("batch body is not a JSON array")
        parts = texts[1:-1].split(RAW_SEPARATOR) if texts != b"[]" else []
        if count is not None and len(parts) != count:
            raise TerminalError(f"batch body does not read as {count} JSON records (it splits into {len(parts)} texts)")
        values = []
        for part in parts:
            try:
                values.append((orjson.loads(part), None))
            except orjson.JSONDecodeError as exc:
                values.append((part.strip().decode(errors="backslashreplace"), f"malformed JSON: {exc}"))
    records: list[dict[str, Any]] = []
    positions: list[int] = []
    unread: list[Unread] = []
    for i, (value, error) in enumerate(values):
        if error is None and type(value) is dict:
            records.append(value)
            positions.append(i)
        elif error is None:
            unread.append(Unread(i, f"expected a JSON object, got {type(value).__name__}", value))
        else:
            unread.append(Unread(i, error, value))
    return records, positions, unread


def decode_records(body: bytes, encoding: Encoding = "json") -> list[dict[str, Any]]:
    """The records of a batch as dicts."""
    if encoding == "arrow":
        from jetl.records import from_ipc

        rows: list[dict[str, Any]] = from_ipc(body).to_pylist()
        return rows
    records: list[dict[str, Any]] = orjson.loads(body)
    return records


def dead_records(body: bytes, encoding: Encoding = "json") -> list[dict[str, Any]]:
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
        return [{"index": None, "origin": None, "field": None, "message": "unreadable batch", "record": text}]
    return [
        {"index": i, "origin": None, "field": None, "message": m, "record": r}
        for i, r, m in sorted(read, key=lambda x: x[0])
    ]


PAYLOAD_HEADROOM = 4096
"""Bytes of a message kept free under `max_payload` for what is not the records: the envelope line (ids, schema
hash; origins are counted on their own), and the headers."""

OVERSIZED_RECORD = "OversizedRecord"
"""`DeadLetter.error_type` of a record larger than a message may be: its body is kept by reference (`ref`)."""


def item_size(item: Any) -> int:
    """Bytes one record takes in a batch body: a JSON text as it is, a record as orjson encodes it."""
    return len(item) if type(item) is bytes else len(dumps(item))


def fit_payload(sizes: Sequence[int], budget: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Cut records of the given encoded sizes into runs whose bodies fit `budget` bytes: ([(start, stop), ...] in
    order, the indexes of records too large to travel in any batch). Separators are counted as RAW_SEPARATOR's."""
    runs: list[tuple[int, int]] = []
    oversized: list[int] = []
    start, used = 0, 2  # the brackets of the JSON array
    for i, size in enumerate(sizes):
        cost = size + len(RAW_SEPARATOR)
        if size + 2 > budget:
            if start < i:
                runs.append((start, i))
            oversized.append(i)
            start, used = i + 1, 2
            continue
        if used + cost > budget and start < i:
            runs.append((start, i))
            start, used = i, 2
        used += cost
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs, oversized


def too_large(size: int, limit: int) -> str:
    """Why one record was set aside: its size against the message limit."""
    return f"record of {size} bytes exceeds the largest message NATS takes (max_payload {limit} bytes)"


def cut_body(body: bytes, encoding: Encoding, budget: int) -> tuple[list[tuple[bytes, int]], list[tuple[int, bytes]]]:
    """Cut an encoded batch body into bodies of at most `budget` bytes, in order, by `fit_payload`: ([(body, its
    record count), ...] (one empty body when no record fits), [(index, the record as JSON) of each record too large
    for any body]).

    JSON bodies are cut by records (each record's own JSON size, exact). Arrow IPC bodies are cut into record-batch
    slices by each row's buffer bytes (an estimate: offsets, validity and padding are not counted), so a slice that
    still encodes over `budget` is cut in halves until each fits, and a single row over it is set aside."""
    if encoding == "json":
        texts = [dumps(r) for r in decode_records(body)]
        runs, oversized = fit_payload([len(t) for t in texts], budget)
        parts = [(b"[" + b",".join(texts[a:b]) + b"]", b - a) for a, b in runs] or [(b"[]", 0)]
        return parts, [(i, texts[i]) for i in oversized]
    from jetl.records import from_ipc, to_ipc

    table = from_ipc(body)
    framing = len(to_ipc(table.slice(0, 0)))  # the schema message and end of stream, in every part
    runs, oversized = fit_payload(_row_bytes(table), budget - framing)
    big = set(oversized)
    out: list[tuple[bytes, int]] = []

    def emit(start: int, stop: int) -> None:
        piece = to_ipc(table.slice(start, stop - start))
        if len(piece) <= budget:
            out.append((piece, stop - start))
        elif stop - start == 1:
            big.add(start)
        else:
            mid = (start + stop) // 2
            emit(start, mid)
            emit(mid, stop)

    for start, stop in runs:
        emit(start, stop)
    if not out:  # every record was too large: an empty part still carries the batch to the loader (its ledger)
        out.append((to_ipc(table.slice(0, 0)), 0))
    return out, [(i, dumps(table.slice(i, 1).to_pylist()[0])) for i in sorted(big)]


def _row_bytes(table: Any) -> list[int]:
    """Per row of an Arrow table, the bytes its values take in the columns' buffers (variable-width values by their
    length, fixed-width by their width, any other column by its average)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    sizes = np.zeros(n, dtype=np.int64)
    for column in table.columns:
        t = column.type
        if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            sizes += pc.binary_length(column).fill_null(0).to_numpy().astype(np.int64) + 8
        elif pa.types.is_primitive(t):
            sizes += max(1, t.bit_width // 8)
        elif n:
            sizes += -(-column.nbytes // n)
    return [int(x) for x in sizes]


MALFORMED_INPUT = "MalformedInput"
"""`DeadLetter.error_type` of input that is not a record at all (a line that is not JSON, or not an object): only
its source can mend it, so a redrive does not take it."""


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
    records: list[dict[str, Any]] = Field(default_factory=list)
    """Each: {"index", "origin", "field", "message", "record"}."""
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
                {
                    "index": None,
                    "origin": origin or None,
                    "field": None,
                    "message": too_large(size, limit),
                    "record": None,
                    "ref": ref,
                }
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
                {
                    "index": i.index if i.index >= 0 else None,
                    "origin": i.origin,
                    "field": i.field or None,
                    "message": i.message,
                    "record": i.record,
                }
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
