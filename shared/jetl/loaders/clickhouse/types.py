"""Record schema -> ClickHouse columns: the type of each pydantic field, and how its values are converted.

`ch_column` holds the mapping (its docstring has the table). `LowCardinality` and `Timezone` are markers a schema
puts in `Annotated[...]`; `arrow_types_for` says when a batch can go into `insert_arrow` as it is.
"""

from __future__ import annotations

import types
import typing
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

import pydantic
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from jetl.errors import ConfigError
from jetl.loaders.clickhouse.sql import _literal
from jetl.messages.wire import dumps

Convert = Callable[[Any], Any]
_DATETIMES = (datetime, pydantic.AwareDatetime, pydantic.NaiveDatetime, pydantic.PastDatetime, pydantic.FutureDatetime)
_DATES = (date, pydantic.PastDate, pydantic.FutureDate)


class LowCardinality:
    """Marker: `Annotated[str, LowCardinality()]` makes the column LowCardinality(String)."""


@dataclass(frozen=True)
class Timezone:
    """Marker: `Annotated[datetime, Timezone("Europe/Berlin")]` makes the column DateTime64(6, 'Europe/Berlin')."""

    name: str
    precision: int = 6

    def __post_init__(self) -> None:
        try:
            zoneinfo.ZoneInfo(self.name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"Timezone: unknown time zone {self.name!r}") from exc
        if not 0 <= self.precision <= 9:
            raise ConfigError(f"Timezone: precision must be 0..9, got {self.precision}")


def _flat_metadata(metadata: list[Any]) -> list[Any]:
    """Constraints may sit in a FieldInfo nested in `Annotated` (e.g. `Annotated[Decimal, Field(...)] | None`)."""
    out: list[Any] = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out.extend(_flat_metadata(list(m.metadata)))
        elif m is not None:
            out.append(m)
    return out


def _meta(metadata: list[Any], attr: str) -> Any:
    return next((getattr(m, attr) for m in metadata if getattr(m, attr, None) is not None), None)


def _text(v: Any) -> Any:
    """Values of a String column: text as it is, structures as JSON text, anything else as str()."""
    if v is None or isinstance(v, str | bytes):
        return v
    if isinstance(v, dict | list | tuple | set | frozenset | BaseModel | bool | int | float | Decimal):
        return dumps(v).decode()
    return str(v)


def _nullable(conv: Convert | None) -> Convert | None:
    if conv is None:
        return None
    return lambda v: None if v is None else conv(v)


def _utc_if_naive(v: Any) -> Any:
    if isinstance(v, datetime) and v.tzinfo is None:
        return v.replace(tzinfo=UTC)  # naive datetimes are UTC in jetl, whatever the process's local zone
    return v


def _enum(cls: type[Enum]) -> tuple[str, Convert]:
    members = list(cls)
    if not members:
        raise ConfigError(f"enum {cls.__name__} has no members")
    labels = {m: (m.value if isinstance(m.value, str) else m.name) for m in members}
    width = 8 if len(members) <= 127 else 16
    body = ", ".join(f"{_literal(labels[m])} = {i}" for i, m in enumerate(members, start=1))

    def conv(v: Any) -> Any:
        if isinstance(v, cls):
            return labels[v]
        try:
            return labels[cls(v)]
        except ValueError:
            return labels[cls[v]]  # by name; a KeyError here is a record that never matched the enum

    return f"Enum{width}({body})", conv


def ch_column(annotation: Any, metadata: list[Any] | None = None) -> tuple[str, Convert | None]:
    """The ClickHouse type for a Python annotation, and how to convert a value for it (None: as it is).

    | Python (pydantic) | ClickHouse |
    |---|---|
    | `X \\| None` | `Nullable(X)`, `LowCardinality(Nullable(String))`; arrays/maps never Nullable (None: empty) |
    | `Annotated[str, LowCardinality()]` | `LowCardinality(String)` |
    | `datetime` / `Annotated[datetime, Timezone("Europe/Berlin")]` | `DateTime64(6, 'UTC')` / `(6, 'Europe/Berlin')` |
    | `Decimal` with `max_digits`/`decimal_places` | `Decimal(p, s)` (default 38, 9) |
    | `list[X]`, `set[X]`, `tuple[X, ...]` / `tuple[X, Y]` / `dict[str, X]` | `Array(X)` / `Tuple` / `Map(String, X)` |
    | `bool`, `int`, `float`, `str`, `date`, `UUID` | `Bool`, `Int64`, `Float64`, `String`, `Date32`, `UUID` |
    | an `Enum` | `Enum8('label' = 1, ...)` (labels: string values, else member names) |
    | `Literal[...]` of str / int | `LowCardinality(String)` / `Int64` |
    | nested models, `dict`, `Any`, the rest | `String` holding JSON text |
    """
    metadata = _flat_metadata(list(metadata or []))
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return ch_column(base, metadata + list(extra))
    if origin in (typing.Union, types.UnionType):
        all_args = typing.get_args(annotation)
        args = [a for a in all_args if a is not type(None)]
        if len(args) == 1 and len(all_args) == 2:
            inner, conv = ch_column(args[0], metadata)
            if inner.startswith(("Array(", "Map(")):
                empty: Any = [] if inner.startswith("Array(") else {}
                return inner, (lambda v: empty if v is None else (conv(v) if conv else v))
            if inner.startswith("Tuple("):
                return "Nullable(String)", _text
            if inner.startswith("Nullable("):
                return inner, conv
            if inner.startswith("LowCardinality("):
                return f"LowCardinality(Nullable({inner[15:-1]}))", _nullable(conv)
            return f"Nullable({inner})", _nullable(conv)
        return "Nullable(String)", _text  # a union of several types: JSON text
    if origin in (list, set, frozenset) or (origin is tuple and typing.get_args(annotation)[1:] == (Ellipsis,)):
        elem = typing.get_args(annotation)
        inner, conv = ch_column(elem[0]) if elem else ("String", _text)
        if conv is None:
            return f"Array({inner})", (list if origin in (set, frozenset) else None)
        return f"Array({inner})", (lambda v, c=conv: [c(x) for x in v])
    if origin is tuple:
        parts = [ch_column(a) for a in typing.get_args(annotation)]
        convs = [c for _, c in parts]

        def tup(v: Any) -> Any:
            return tuple(c(x) if c else x for c, x in zip(convs, v, strict=True))

        return f"Tuple({', '.join(t for t, _ in parts)})", (tup if any(convs) else tuple)
    if origin is dict:
        key, value = typing.get_args(annotation) or (Any, Any)
        if key is str:
            inner, conv = ch_column(value)
            if conv is None:
                return f"Map(String, {inner})", None
            return f"Map(String, {inner})", (lambda v, c=conv: {k: c(x) for k, x in v.items()})
        return "String", _text
    if origin is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, bool) for v in values):
            return "Bool", None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "Int64", None
        if all(isinstance(v, str) for v in values):
            return "LowCardinality(String)", None
        return "String", _text
    low = any(isinstance(m, LowCardinality) or m is LowCardinality for m in metadata)
    if annotation is bool:
        return "Bool", None
    if annotation is int:
        return "Int64", None
    if annotation is float:
        return "Float64", None
    if annotation in (str, bytes):
        return ("LowCardinality(String)" if low else "String"), None
    if annotation in _DATETIMES:
        tz = next((m for m in metadata if isinstance(m, Timezone)), None) or Timezone("UTC")
        return f"DateTime64({tz.precision}, {_literal(tz.name)})", _utc_if_naive
    if annotation in _DATES:
        return "Date32", None
    if annotation is time:
        return "String", lambda v: v.isoformat() if isinstance(v, time) else v
    if annotation is timedelta:
        return "Float64", lambda v: v.total_seconds() if isinstance(v, timedelta) else v
    if annotation is Decimal:
        digits = _meta(metadata, "max_digits") or 38
        places = _meta(metadata, "decimal_places")
        places = min(9, digits) if places is None else places
        if not 1 <= digits <= 76 or not 0 <= places <= digits:
            raise ConfigError(f"Decimal({digits}, {places}) is out of ClickHouse's range (precision 1..76)")
        return f"Decimal({digits}, {places})", None
    if annotation is UUID or (isinstance(annotation, type) and issubclass(annotation, UUID)):
        return "UUID", lambda v: v if isinstance(v, UUID) else UUID(str(v))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _enum(annotation)
    if annotation is Any or annotation is object:
        return "Nullable(String)", _text
    return "String", _text  # dicts, nested models: stored as JSON text


def ch_type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """The ClickHouse type for a Python annotation (see `ch_column`)."""
    return ch_column(annotation, metadata)[0]


def columns_for(model: type[BaseModel]) -> list[tuple[str, str]]:
    """(name, ClickHouse type) per model field."""
    return [(name, ch_type(f.annotation, list(f.metadata))) for name, f in model.model_fields.items()]


def converters_for(model: type[BaseModel]) -> list[tuple[str, Convert | None]]:
    """(name, value converter or None) per model field, in column order."""
    return [(name, ch_column(f.annotation, list(f.metadata))[1]) for name, f in model.model_fields.items()]


# ClickHouse column types (inside Nullable / LowCardinality) whose validated Python values pyarrow converts exactly.
_ARROW_TYPES = {"Int64": "int64", "Float64": "float64", "Bool": "bool_", "String": "string", "Date32": "date32"}


def arrow_types_for(model: type[BaseModel]) -> list[Any] | None:
    """pyarrow type per model field when every column goes into insert_arrow as it is; None when one needs a
    converter (Decimal, Enum, UUID, JSON text, containers, ...): those batches take the column-oriented insert."""
    import pyarrow as pa

    out: list[Any] = []
    for f in model.model_fields.values():
        ch, conv = ch_column(f.annotation, list(f.metadata))
        base = ch.removeprefix("LowCardinality(").removesuffix(")") if ch.startswith("LowCardinality(") else ch
        base = base.removeprefix("Nullable(").removesuffix(")") if base.startswith("Nullable(") else base
        if conv is None and base in _ARROW_TYPES:
            out.append(getattr(pa, _ARROW_TYPES[base])())
        elif conv is _utc_if_naive and base == "DateTime64(6, 'UTC')":
            out.append(pa.timestamp("us", tz="UTC"))  # pyarrow reads a naive datetime as UTC, as _utc_if_naive does
        else:
            return None
    return out
