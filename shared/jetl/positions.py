"""Cursor positions: how cursor values sort, wherever they are compared (the HTTP extractor's positions, the
tracker's rule that a cursor moves only forward), and where each extractor's part of a pipeline's cursor is kept."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jetl.protocols import Extractor

OrderKey = tuple[str, Any]
"""A value as it sorts: (kind, comparable value); kinds are "number", "instant" and "text"."""


def order_key(value: Any) -> OrderKey:
    """What a cursor value sorts by: numbers, ISO-8601 strings as instants, other strings as text."""
    if isinstance(value, bool):
        raise TypeError("a boolean cannot be a cursor value")
    if isinstance(value, (int, float)):
        return "number", value
    if isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            return "text", value
        return "instant", instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    raise TypeError(f"a {type(value).__name__} cannot be a cursor value")


EACH = "extractors"
"""The key under which a pipeline of several extractors keeps each one's cursor, by its index."""


def cursor_of(stored: dict[str, Any] | None, index: int) -> dict[str, Any] | None:
    """Extractor `index`'s part of a pipeline's stored cursor. A cursor stored in the single form (one
    extractor, or before each had its own) goes to every extractor, as it always did."""
    if stored is not None and isinstance(stored.get(EACH), dict):
        part: dict[str, Any] | None = stored[EACH].get(str(index))
        return part
    return stored


def joined_cursor(extractors: Sequence[Extractor]) -> dict[str, Any] | None:
    """The pipeline's cursor after a run: the single extractor's own, or each one's under its index, so one
    extractor's position never overwrites another's."""
    if len(extractors) == 1:
        return extractors[0].next_cursor() or None
    each = {str(i): c for i, e in enumerate(extractors) if (c := e.next_cursor())}
    return {EACH: each} if each else None


def cursor_text(cursor: dict[str, Any] | None) -> str:
    """A cursor for people: `value` or `value/key` (each extractor's, `#i value`, when there are several)."""
    if not cursor:
        return "-"
    if isinstance(cursor.get(EACH), dict):
        return " ".join(f"#{i} {cursor_text(part)}" for i, part in sorted(cursor[EACH].items()))
    if "value" not in cursor:
        return f"{len(cursor)} entries"  # a file extractor's record of files loaded
    key = cursor.get("key")
    return f"{cursor['value']}" + ("" if key is None else f"/{key}")
