"""How cursor values sort, wherever they are compared: the HTTP extractor's positions and the tracker's rule that
a cursor moves only forward."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
