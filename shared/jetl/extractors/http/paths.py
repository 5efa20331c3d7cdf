"""Dotted JSON paths (`data.items`, `meta.next_cursor`, `items.0.id`) through a decoded response body.

Used by `records_path`, the body-driven paginators and `Incremental.field`.
"""

from __future__ import annotations

from typing import Any

from jetl.errors import ConfigError

_MISSING: Any = object()
"""What `_lookup` returns when a path leads nowhere (None is a value a body may hold)."""


def _parse_path(path: str, what: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not path or not all(parts):
        raise ConfigError(f"HttpExtractor: {what} {path!r} is not a dotted path like 'data.items'")
    return parts


def _lookup(value: Any, parts: tuple[str, ...]) -> Any:
    """Follow a dotted path through dicts and lists (integer parts); `_MISSING` when it leads nowhere."""
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value
