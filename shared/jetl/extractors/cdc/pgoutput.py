"""The pgoutput logical decoding format (protocol version 1), parsed: the messages PostgreSQL's own output plugin
writes for a publication, as `pg_logical_slot_peek_binary_changes` returns them, one message a row.

https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html. Only what protocol version 1 sends
without streaming of in-progress transactions: Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
Truncate and logical decoding Message. Values come as text (the type's output function), decoded by type OID for
the types JSON carries natively; the rest stay text for the pipeline's schema to parse (pydantic's lax mode reads
PostgreSQL's text of timestamps, numerics and uuids).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from jetl.errors import TerminalError

_INT_TYPES = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_FLOAT_TYPES = frozenset({700, 701})  # float4, float8
_BOOL = 16

UNCHANGED = object()
"""A TOASTed value an update did not change, which pgoutput leaves out ('u')."""


def decode_value(type_oid: int, text: str | None) -> Any:
    """A column's text as JSON carries it: ints, floats and bools as such, every other type as PostgreSQL's text."""
    if text is None:
        return None
    if type_oid in _INT_TYPES:
        return int(text)
    if type_oid in _FLOAT_TYPES:
        return float(text)
    if type_oid == _BOOL:
        return text in ("t", "true")
    return text


def lsn_text(lsn: int) -> str:
    """`0/16B3748`, as PostgreSQL writes a log position."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    """A log position from PostgreSQL's `hi/lo` text."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


@dataclass(frozen=True)
class Column:
    """One column of a relation as the publication sends it."""

    name: str
    type_oid: int
    key: bool


@dataclass(frozen=True)
class Relation:
    """A table's shape as pgoutput announced it (again after every change to it, and once per decoding session)."""

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        """`schema.table`."""
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True)
class Begin:
    """A transaction starts: `final_lsn` is where its commit record is (what orders transactions)."""

    final_lsn: int
    commit_time: int
    xid: int


@dataclass(frozen=True)
class Commit:
    """A transaction ends: `end_lsn` is just past its commit record (where a slot confirms to)."""

    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True)
class Change:
    """An insert ('I'), update ('U') or delete ('D') of one row: `new` the row after it (None for a delete), `old`
    the key or the whole old row (when the table's replica identity sends it)."""

    op: str
    relation: int
    new: list[Any] | None
    old: list[Any] | None = None


@dataclass(frozen=True)
class Truncate:
    """TRUNCATE of the listed relations."""

    relations: tuple[int, ...]


@dataclass(frozen=True)
class Message:
    """A logical decoding message (`pg_logical_emit_message`)."""

    lsn: int
    transactional: bool
    prefix: str
    content: bytes


@dataclass(frozen=True)
class Ignored:
    """A message the extractor has no use for (Origin, Type)."""

    kind: str


Decoded = Begin | Commit | Relation | Change | Truncate | Message | Ignored


@dataclass
class _Reader:
    data: bytes
    at: int = 0
    _cache: dict[str, struct.Struct] = field(default_factory=dict)

    def unpack(self, fmt: str) -> Any:
        s = self._cache.get(fmt) or self._cache.setdefault(fmt, struct.Struct(fmt))
        values = s.unpack_from(self.data, self.at)
        self.at += s.size
        return values[0] if len(values) == 1 else values

    def byte(self) -> str:
        self.at += 1
        return chr(self.data[self.at - 1])

    def string(self) -> str:
        end = self.data.index(0, self.at)
        text = self.data[self.at : end].decode()
        self.at = end + 1
        return text

    def raw(self, n: int) -> bytes:
        self.at += n
        return self.data[self.at - n : self.at]

    def tuple_data(self) -> list[Any]:
        """TupleData: each column's text (None for NULL, UNCHANGED for a TOASTed value left out)."""
        values: list[Any] = []
        for _ in range(self.unpack("!h")):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                values.append(self.raw(self.unpack("!i")).decode())
            else:  # 'b' needs the `binary` option, which the extractor never sets
                raise TerminalError(f"pgoutput sent a column in format {kind!r}; the extractor asks for text only")
        return values


def parse(data: bytes) -> Decoded:
    """One pgoutput message."""
    r = _Reader(data)
    kind = r.byte()
    if kind == "B":
        final_lsn, commit_time, xid = r.unpack("!QqI")
        return Begin(final_lsn, commit_time, xid)
    if kind == "C":
        _flags, commit_lsn, end_lsn, commit_time = r.unpack("!BQQq")
        return Commit(commit_lsn, end_lsn, commit_time)
    if kind == "R":
        oid = r.unpack("!I")
        namespace, name = r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.unpack("!h")):
            flags = r.unpack("!B")
            col = r.string()
            type_oid, _typmod = r.unpack("!Ii")
            columns.append(Column(col, type_oid, bool(flags & 1)))
        return Relation(oid, namespace or "pg_catalog", name, identity, tuple(columns))
    if kind == "I":
        oid = r.unpack("!I")
        r.byte()  # 'N'
        return Change("I", oid, r.tuple_data())
    if kind == "U":
        oid = r.unpack("!I")
        old = None
        tag = r.byte()
        if tag in ("K", "O"):
            old = r.tuple_data()
            tag = r.byte()
        return Change("U", oid, r.tuple_data(), old)
    if kind == "D":
        oid = r.unpack("!I")
        r.byte()  # 'K' (the key) or 'O' (the whole old row)
        return Change("D", oid, None, r.tuple_data())
    if kind == "T":
        n, _options = r.unpack("!IB")
        return Truncate(tuple(r.unpack("!I") for _ in range(n)))
    if kind == "M":
        flags, lsn = r.unpack("!BQ")
        prefix = r.string()
        return Message(lsn, bool(flags & 1), prefix, r.raw(r.unpack("!I")))
    if kind in ("O", "Y"):
        return Ignored(kind)
    raise TerminalError(f"pgoutput message of unknown kind {kind!r}: a protocol this extractor does not read")
