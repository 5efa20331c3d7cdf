"""Payload cutting: a batch body cut by bytes into bodies that fit a NATS message, and what is set aside when a
single record is too large for any."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jetl.messages.models import Encoding
from jetl.messages.wire import RAW_SEPARATOR, decode_records, dumps

PAYLOAD_HEADROOM = 4096
"""Bytes of a message kept free under `max_payload` for what is not the records: the envelope line (ids, schema
hash; origins are counted on their own), and the headers."""


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
