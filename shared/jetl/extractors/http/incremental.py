"""Incremental extraction over HTTP: `Incremental` (`jetl.extractors.incremental`) sends the last position's value
as its `param` and keeps only the records after that position; here is how positions are stored and how values
order.

A position is the cursor field's value plus, when declared, a tie-breaker field's value: `(updated_at, id)`. Values
are compared typed: numbers as numbers, ISO-8601 timestamps as instants (naive ones read as UTC), other text as
text; a run that mixes kinds fails rather than guess.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from jetl.errors import ConfigError, TerminalError
from jetl.extractors.http.paginate import ParamValue
from jetl.extractors.http.paths import _MISSING, _lookup
from jetl.extractors.incremental import Incremental
from jetl.positions import OrderKey, order_key


def cursor_at(inc: Incremental, value: Any, key: Any = None) -> dict[str, Any]:
    """The stored cursor of a position: strictly after `value` (and `key`; None: every record at `value`)."""
    if isinstance(value, datetime) and value.tzinfo is None:  # as `order_key` reads naive text: UTC
        value = value.replace(tzinfo=UTC)
    if isinstance(value, (datetime, date)):
        value = value.isoformat()
    order_key(value)  # refuse a value that cannot be a position (a boolean, a list)
    cursor: dict[str, Any] = {"field": inc.field, "value": value}
    if inc.tie_breaker is not None:
        cursor["tie_breaker"] = inc.tie_breaker
        cursor["key"] = key
    return cursor


def start_of(inc: Incremental, cursor: Any, where: str) -> tuple[tuple[Any, Any] | None, bool]:
    """((value, key) a run starts after, whether records at it are kept), from the stored `cursor` (kept:
    none), else `initial` (kept: all of them), else nothing."""
    if not cursor:
        return (None if inc.initial is None else (_initial(inc.initial), None)), True
    if not isinstance(cursor, dict) or "value" not in cursor:
        raise ConfigError(f"{where}: the stored cursor {cursor!r} has no 'value'")
    if cursor.get("field", inc.field) != inc.field:
        raise ConfigError(
            f"{where}: the stored cursor tracks field {cursor.get('field')!r}, but the extractor now "
            f"tracks {inc.field!r}; reset the pipeline's cursor to start over"
        )
    if cursor["value"] is None:
        return None, True
    # a key stored for another tie-breaker (or before there was one) says nothing about this one's order
    key = cursor.get("key") if cursor.get("tie_breaker") == inc.tie_breaker else None
    return (cursor["value"], key), False


def _initial(value: Any) -> Any:
    """`Incremental.initial` as the cursor keeps it (JSON): a datetime as ISO text, a Decimal or UUID as text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    return value


def _position(inc: Incremental, value: Any, key: Any, where: str) -> Position:
    """A record's place in cursor order: its field value, then its tie-breaker value, typed."""
    own = _order(value, f"field {inc.field!r}", where)
    tie = None if key is None else _order(key, f"tie_breaker {inc.tie_breaker!r}", where)
    return own, tie


def _after(inc: Incremental, here: Position, there: Position, inclusive: bool, where: str) -> bool:
    """`here` strictly after `there` (or at its value, when `inclusive` and `there` has no key)."""
    for mine, theirs, what in ((here[0], there[0], "field"), (here[1], there[1], "tie_breaker")):
        if theirs is None or mine is None:
            return inclusive
        if mine[0] != theirs[0]:
            raise TerminalError(
                f"{where}: incremental {what} {getattr(inc, what)!r} mixes a {mine[0]} with a "
                f"{theirs[0]}; cursor values must all be timestamps, numbers or text"
            )
        if mine[1] != theirs[1]:
            return bool(mine[1] > theirs[1])
    return False


Position = tuple[OrderKey, OrderKey | None]
"""A record's place in cursor order: the field's typed value, then the tie-breaker's (None without one)."""


def _order(value: Any, what: str, where: str) -> OrderKey:
    try:
        return order_key(value)
    except TypeError as exc:
        raise TerminalError(f"{where}: incremental {what}: {exc}") from exc


class _Filter:
    """One run's incremental filter: keeps the records after the start position and follows the furthest one
    kept, which becomes the run's cursor."""

    def __init__(
        self,
        inc: Incremental,
        field_parts: tuple[str, ...],
        key_parts: tuple[str, ...],
        start: tuple[Any, Any] | None,
        inclusive: bool,
    ) -> None:
        self.inc = inc
        self.field_parts = field_parts
        self.key_parts = key_parts
        self.inclusive = inclusive
        self.cursor: dict[str, Any] = {"field": inc.field, "value": None} if start is None else cursor_at(inc, *start)
        self.at: Position | None = None
        if start is not None and start[0] is not None:
            self.at = _position(inc, start[0], start[1], "the stored cursor")
        self.high = self.at
        self.skipped = 0
        """Records at or before the start: the last run loaded them."""

    def take(self, item: dict[str, Any], origin: str) -> bool | str:
        """True: keep the record; False: skip it (at or before the start); a string: reject it, for that reason."""
        value = _lookup(item, self.field_parts)
        key = _lookup(item, self.key_parts) if self.key_parts else None
        if value is _MISSING or value is None:  # no position: kept, and moves nothing
            return True
        if key is _MISSING or (self.key_parts and key is None):
            return f"incremental tie_breaker {self.inc.tie_breaker!r} is missing"
        here = _position(self.inc, value, key, origin)
        if self.at is not None and not _after(self.inc, here, self.at, self.inclusive, origin):
            self.skipped += 1  # at or before the position the last run reached: loaded then
            return False
        if self.high is None or _after(self.inc, here, self.high, False, origin):
            self.high = here
            self.cursor = cursor_at(self.inc, value, key)
        return True


def _param(value: Any) -> ParamValue:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
