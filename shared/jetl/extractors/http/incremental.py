"""Incremental extraction: `Incremental` (send the last high-water mark, track the new one) and how values order.

High-water values are numbers, ISO-8601 timestamps (compared as instants, naive ones read as UTC) or text; a run
that mixes kinds fails rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from jetl.errors import ConfigError
from jetl.extractors.http.paginate import ParamValue
from jetl.extractors.http.paths import _parse_path


@dataclass(frozen=True)
class Incremental:
    """Send the high-water mark of the last completed run as `param`; track the max of `field` seen.

    The value sent is exactly the max seen, so an API whose filter is inclusive (`>=`) returns the boundary
    record again: that is at-least-once, never a gap. `initial` is sent on the very first run (nothing when
    None).
    """

    param: str
    field: str
    """Dotted path of the record field that orders changes (ISO-8601 timestamps or numbers)."""
    initial: str | int | float | datetime | date | None = None

    def __post_init__(self) -> None:
        if not self.param:
            raise ConfigError("HttpExtractor: Incremental needs a parameter name")
        _parse_path(self.field, "incremental field")
        if isinstance(self.initial, bool) or not isinstance(self.initial, (str, int, float, date, type(None))):
            raise ConfigError(
                f"HttpExtractor: Incremental initial must be a string, number or datetime: {self.initial!r}"
            )
        if isinstance(self.initial, date):  # datetime included: the cursor is JSON, so keep its ISO form
            object.__setattr__(self, "initial", self.initial.isoformat())


def _order_key(value: Any) -> tuple[str, Any]:
    """What a high-water value sorts by: numbers, ISO-8601 strings as instants, other strings as text."""
    if isinstance(value, bool):
        raise TypeError("a boolean cannot be a high-water mark")
    if isinstance(value, (int, float)):
        return "number", value
    if isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            return "text", value
        return "instant", instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    raise TypeError(f"a {type(value).__name__} cannot be a high-water mark")


def _param(value: Any) -> ParamValue:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
