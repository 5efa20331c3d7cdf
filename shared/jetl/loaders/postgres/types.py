"""Record schema -> PostgreSQL columns: the type of each pydantic field, and how its values are written by COPY.

| field                         | column                              |
|-------------------------------|-------------------------------------|
| bool / int / float / str      | boolean / bigint / double precision / text |
| bytes                         | bytea                               |
| datetime / date / time        | timestamptz / date / time           |
| Decimal (max_digits, places)  | numeric(p, s) (numeric without them) |
| UUID                          | uuid                                |
| Enum, Literal                 | bigint when every value is an int, else text |
| list, dict, nested model, Any | jsonb (written as JSON text)        |
| `X | None`                    | the type of X, nullable              |

Everything else is NOT NULL: a record that validated has a value there.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from jetl.errors import ConfigError
from jetl.messages.wire import dumps

Convert = Callable[[Any], Any]


def quote(name: str) -> str:
    """A PostgreSQL identifier in double quotes; ConfigError for an empty one or one holding a NUL."""
    if not name or "\x00" in name or len(name) > 63:
        raise ConfigError(f"invalid PostgreSQL identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _json(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return None if v is None else dumps(v).decode()
    if isinstance(v, BaseModel):
        return v.model_dump_json()
    return dumps(v).decode()


def _enum_value(v: Any) -> Any:
    return v.value if isinstance(v, Enum) else v


def _flat(metadata: list[Any]) -> list[Any]:
    out: list[Any] = []
    for m in metadata:
        out.extend(_flat(list(m.metadata)) if isinstance(m, FieldInfo) else [m])
    return out


def pg_type(annotation: Any, metadata: list[Any] | None = None) -> tuple[str, Convert | None, bool]:
    """(column type, value converter or None, nullable) of a model field's annotation."""
    metadata = list(metadata or [])
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return pg_type(base, metadata + list(extra))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            sql, conv, inner = pg_type(args[0], metadata)
            return sql, conv, nullable or inner
        return "jsonb", _json, nullable
    if origin in (list, set, frozenset, tuple, dict) or annotation in (list, dict, Any) or annotation is typing.Any:
        return "jsonb", _json, False
    if origin is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "bigint", None, False
        return "text", str, False
    if annotation is bool:
        return "boolean", None, False
    if annotation is int:
        return "bigint", None, False
    if annotation is float:
        return "double precision", None, False
    if annotation is str:
        return "text", None, False
    if annotation is bytes:
        return "bytea", None, False
    if annotation is UUID:
        return "uuid", None, False
    if isinstance(annotation, type):
        if issubclass(annotation, datetime):
            return "timestamptz", None, False
        if issubclass(annotation, date):
            return "date", None, False
        if issubclass(annotation, time):
            return "time", None, False
        if issubclass(annotation, Decimal):
            flat = _flat(metadata)
            digits = next((m.max_digits for m in flat if getattr(m, "max_digits", None)), None)
            places = next((m.decimal_places for m in flat if getattr(m, "decimal_places", None) is not None), None)
            if digits is None:
                return "numeric", None, False
            return f"numeric({int(digits)}, {int(places or 0)})", None, False
        if issubclass(annotation, Enum):
            if all(isinstance(m.value, int) and not isinstance(m.value, bool) for m in annotation):
                return "bigint", _enum_value, False
            return "text", _enum_value, False
        if issubclass(annotation, BaseModel):
            return "jsonb", _json, False
        if issubclass(annotation, str):
            return "text", str, False
        if issubclass(annotation, int) and not issubclass(annotation, bool):
            return "bigint", int, False
    raise ConfigError(f"no PostgreSQL type for {annotation!r}: use a plain type, or dict/Any for JSON")


def columns_for(model: type[BaseModel]) -> list[tuple[str, str, Convert | None, bool]]:
    """(name, type, converter, nullable) of every field of `model`, in field order."""
    out = []
    for name, f in model.model_fields.items():
        try:
            sql, conv, nullable = pg_type(f.annotation, list(f.metadata))
        except ConfigError as exc:
            raise ConfigError(f"{model.__name__}.{name}: {exc}") from exc
        out.append((name, sql, conv, nullable))
    return out
