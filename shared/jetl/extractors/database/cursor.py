"""The database extractor's cursor: a position is the cursor column's value plus a tie-breaker's, stored as JSON
with a type tag per value (`_dump`, `_load`) so the next run rebuilds the exact value, and the WHERE/ORDER BY that
reads strictly after it (`_after`).

A stored cursor is `{"column", "value", "type", "key_column", "key", "key_type"}` (no key when the column is unique
on its own); one without `key_column` was stored before tie-breakers and is compared as `col > value`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from jetl.errors import ConfigError, TerminalError

_HIGH_WATER = "jetl_high_water"
_HIGH_KEY = "jetl_high_key"
_UNTIL, _UNTIL_KEY = "jetl_until", "jetl_until_key"  # a partitioned run's window end (`_through_clause`)
_POSITION = ("jetl_position_value", "jetl_position_key")  # trailing columns a run reads its position from


def _dump(value: Any) -> tuple[Any, str]:
    """A high-water value as (JSON value, type tag), so the next run can rebuild the exact value."""
    if isinstance(value, datetime):
        return value.isoformat(), "datetime"
    if isinstance(value, date):
        return value.isoformat(), "date"
    if isinstance(value, Decimal):
        return str(value), "decimal"
    if isinstance(value, bool):
        raise TypeError("a boolean column cannot be a high-water mark")
    if isinstance(value, int):
        return value, "int"
    if isinstance(value, float):
        return value, "float"
    if isinstance(value, str):
        return value, "str"
    if isinstance(value, uuid.UUID):
        return str(value), "uuid"
    raise TypeError(f"a {type(value).__name__} value cannot be a high-water mark")


_LOADERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "decimal": Decimal,
    "int": int,
    "float": float,
    "str": str,
    "uuid": uuid.UUID,
}


def _load(value: Any, tag: str | None) -> Any:
    if value is None or tag is None:
        return value
    loader = _LOADERS.get(tag)
    if loader is None:
        raise ConfigError(f"the stored cursor has an unknown value type {tag!r}")
    try:
        return loader(value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ConfigError(f"the stored cursor value {value!r} is not a valid {tag}: {exc}") from exc


def _bind_type(value: Any, column: sa.ColumnElement[Any]) -> sa.types.TypeEngine[Any] | None:
    """The SQL type to bind a position value with: the column's, or one from the value in a text query."""
    if not isinstance(column.type, sa.types.NullType):
        return column.type
    if isinstance(value, datetime):
        return sa.DateTime(timezone=value.tzinfo is not None)
    if isinstance(value, date):
        return sa.Date()
    if isinstance(value, Decimal):
        return sa.Numeric()
    return None


@dataclass(frozen=True)
class _Position:
    """A row's place in the cursor order: the cursor column's value, then the tie-breaker's (None when the
    column is unique on its own). `legacy` marks a start from `initial=` or from a cursor stored before
    tie-breakers: it is compared as `col > value` through the column's type, as those cursors were made."""

    value: Any
    key: Any = None
    legacy: bool = False
    stored: Any = None
    """The value as the cursor stored it (JSON): the exact source text for a SQLite date/time column."""

    def ahead_of(self, other: _Position | None) -> bool:
        """Strictly after `other` (the database already said so; this guards the cursor against moving back)."""
        if other is None or other.value is None:
            return True
        try:
            if self.value != other.value:
                return bool(self.value > other.value)
            return other.key is not None and self.key is not None and bool(self.key > other.key)
        except TypeError:  # a legacy typed mark against source text: the database's order decides
            return True


def _compared(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """The column as the source compares it. SQLite keeps dates and times as text and compares the text, while
    SQLAlchemy would parse it and bind a mark rendered in its own format ('2025-01-04 11:20:00.000000' sorts
    below '2025-01-04T09:00:00'): read and bind the text itself."""
    if dialect == "sqlite" and isinstance(column.type, (sa.Date, sa.DateTime, sa.Time)):
        return sa.type_coerce(column, sa.String())
    return column


def _text_tag(column: sa.ColumnElement[Any], dialect: str) -> str | None:
    """The type tag a SQLite date/time column's text keeps in the cursor, so the cursor still says what it is."""
    if dialect == "sqlite" and isinstance(column.type, sa.DateTime):
        return "datetime"
    if dialect == "sqlite" and isinstance(column.type, sa.Date):
        return "date"
    return None


def _start_position(cursor: Any, column: str, initial: Any, where: str) -> _Position | None:
    """Where a run starts: the stored cursor's position, else `initial`, else the beginning (None)."""
    if not cursor:
        return None if initial is None else _Position(initial, legacy=True)
    if not isinstance(cursor, dict) or "value" not in cursor:
        raise ConfigError(f"{where}: the stored cursor {cursor!r} has no 'value'")
    if cursor.get("column", column) != column:
        raise ConfigError(
            f"{where}: the stored cursor tracks column {cursor.get('column')!r}, but the "
            f"extractor now tracks {column!r}; reset the pipeline's cursor to start over"
        )
    try:
        value = _load(cursor["value"], cursor.get("type"))
        key = _load(cursor.get("key"), cursor.get("key_type"))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if value is None:
        return None
    legacy = "key_column" not in cursor  # stored before tie-breakers: every row at its value was read
    return _Position(value, key, legacy=legacy, stored=cursor["value"])


def _cursor_of(
    column: str | None, position: _Position | None, key_column: str | None, tag: str | None, where: str
) -> dict[str, Any]:
    """The cursor to store for `position` on `column` (its value as `tag` when it travels as source text)."""
    if position is None:
        return {"column": column, "value": None, "type": None}
    try:
        value, value_tag = _dump(position.value)
        cursor = {"column": column, "value": value, "type": tag or value_tag}
        if key_column is not None:
            cursor["key_column"] = key_column
            if position.key is not None:
                cursor["key"], cursor["key_type"] = _dump(position.key)
    except TypeError as exc:
        raise TerminalError(f"{where}: column {column!r} or {key_column!r}: {exc}") from exc
    return cursor


def cursor_at(column: str, tie_breaker: str | None, value: Any, key: Any, where: str) -> dict[str, Any]:
    """The cursor an operator seeds: rows strictly after `value` (and `key`, the tie-breaker's value; None: after
    every row at `value`). Timestamps are kept as ISO text, which the source casts or compares as it stores them."""
    if isinstance(value, (datetime, date)):
        value = value.isoformat()
    try:
        stored, tag = _dump(value)
        cursor = {"column": column, "value": stored, "type": tag, "key_column": tie_breaker}
        if key is not None:  # the declared tie-breaker's value, or the table's primary key's
            cursor["key"], cursor["key_type"] = _dump(key)
    except TypeError as exc:
        raise ConfigError(f"{where}: {value!r} / {key!r} cannot be a cursor position: {exc}") from exc
    # key_column present without a key: a position after every row at `value` (not the legacy typed compare)
    return cursor


def _after(
    statement: sa.Select[Any],
    value: sa.ColumnElement[Any],
    key: sa.ColumnElement[Any],
    *,
    unique: bool,
    start: _Position | None,
    binds: dict[str, Any],
    legacy: sa.ColumnElement[Any] | None = None,
) -> sa.Select[Any]:
    """`statement` limited to rows after `start`, in cursor order, with the position columns (`_POSITION`) added;
    the bound values go into `binds`. `unique`: the cursor column is its own tie-breaker."""
    statement = statement.add_columns(value.label(_POSITION[0]))
    if not unique:
        statement = statement.add_columns(key.label(_POSITION[1]))
    after = _after_clause(value, key, unique=unique, start=start, binds=binds, legacy=legacy)
    if after is not None:
        statement = statement.where(after)
    return statement.order_by(value, *([] if unique else [key]))


def _after_clause(
    value: sa.ColumnElement[Any],
    key: sa.ColumnElement[Any],
    *,
    unique: bool,
    start: _Position | None,
    binds: dict[str, Any],
    legacy: sa.ColumnElement[Any] | None = None,
) -> sa.ColumnElement[bool] | None:
    """The rows strictly after `start` (None: every row), its values bound into `binds` (see `_after`)."""
    if start is None:
        return None
    binds[_HIGH_WATER] = start.value
    if start.legacy:  # as the cursor was made: through the column's type, every row at the value read
        compared = value if legacy is None else legacy
        return compared > sa.bindparam(_HIGH_WATER, type_=_bind_type(start.value, compared))
    high = sa.bindparam(_HIGH_WATER, type_=_bind_type(start.value, value))
    if unique or start.key is None:
        return value > high
    binds[_HIGH_KEY] = start.key
    return sa.or_(value > high, sa.and_(value == high, key > sa.bindparam(_HIGH_KEY, type_=_bind_type(start.key, key))))


def _through_clause(
    value: sa.ColumnElement[Any], key: sa.ColumnElement[Any], *, unique: bool, end: _Position, binds: dict[str, Any]
) -> sa.ColumnElement[bool]:
    """The rows at or before `end` in cursor order: a partitioned run's window ends at the position its planning
    read, so every partition reads the same rows however many arrive meanwhile."""
    binds[_UNTIL] = end.value
    until = sa.bindparam(_UNTIL, type_=_bind_type(end.value, value))
    if unique or end.key is None:
        return value <= until
    binds[_UNTIL_KEY] = end.key
    return sa.or_(
        value < until, sa.and_(value == until, key <= sa.bindparam(_UNTIL_KEY, type_=_bind_type(end.key, key)))
    )
