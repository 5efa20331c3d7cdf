"""The wire format: a batch travels as one NATS message, the JSON envelope (`Batch`) on the first line, then the
records, encoded as a JSON array (`encoding="json"`).

Splitting the envelope from the records keeps the records as bytes until a stage needs them, so a whole batch is
validated in one `TypeAdapter.validate_json` call. Clean batches bound for a loader that takes Arrow, of a schema of
bare typed fields, travel as Arrow IPC instead (`encoding="arrow"`, see `jetl.records`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel

from jetl.errors import TerminalError
from jetl.messages.models import Batch, Encoding


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
