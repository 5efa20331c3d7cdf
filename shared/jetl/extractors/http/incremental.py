"""Incremental extraction: `Incremental` (send the last position's value, keep only records after it) and how
values order.

A position is the cursor field's value plus, when declared, a tie-breaker field's value: `(updated_at, id)`. Values
are compared typed: numbers as numbers, ISO-8601 timestamps as instants (naive ones read as UTC), other text as
text; a run that mixes kinds fails rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from jetl.errors import ConfigError
from jetl.extractors.http.paginate import ParamValue
from jetl.extractors.http.paths import _parse_path
from jetl.positions import order_key


@dataclass(frozen=True)
class Incremental:
    """Send the cursor value of the last completed run as `param`; keep only records strictly after its position.

    The position is `(field, tie_breaker)`: the cursor field's value, then the tie-breaker's (a field unique among
    the records, such as `id`). Most APIs filter inclusively (`updated_since` means `>=`), so the boundary records
    come back; the extractor drops every record at or before the position, so none is taken twice, and with a
    tie-breaker none is skipped when many records share one timestamp. Without `tie_breaker` every record at the
    last value counts as read: declare one whenever values repeat. `initial` is sent on the very first run (nothing
    when None), and records at it are kept.

    Example:
        Incremental(param="updated_since", field="updated_at", tie_breaker="id")
    """

    param: str
    field: str
    """Dotted path of the record field that orders changes (ISO-8601 timestamps or numbers)."""
    initial: str | int | float | datetime | date | None = None
    tie_breaker: str | None = None
    """Dotted path of a field unique among the records, ordering records that share a `field` value."""

    def __post_init__(self) -> None:
        if not self.param:
            raise ConfigError("HttpExtractor: Incremental needs a parameter name")
        _parse_path(self.field, "incremental field")
        if self.tie_breaker is not None:
            _parse_path(self.tie_breaker, "incremental tie_breaker")
        if isinstance(self.initial, bool) or not isinstance(self.initial, (str, int, float, date, type(None))):
            raise ConfigError(
                f"HttpExtractor: Incremental initial must be a string, number or datetime: {self.initial!r}"
            )
        if isinstance(self.initial, date):  # datetime included: the cursor is JSON, so keep its ISO form
            object.__setattr__(self, "initial", self.initial.isoformat())

    def cursor_at(self, value: Any, key: Any = None) -> dict[str, Any]:
        """The stored cursor of a position: strictly after `value` (and `key`; None: every record at `value`)."""
        if isinstance(value, datetime) and value.tzinfo is None:  # as `order_key` reads naive text: UTC
            value = value.replace(tzinfo=UTC)
        if isinstance(value, (datetime, date)):
            value = value.isoformat()
        order_key(value)  # refuse a value that cannot be a position (a boolean, a list)
        cursor: dict[str, Any] = {"field": self.field, "value": value}
        if self.tie_breaker is not None:
            cursor["tie_breaker"] = self.tie_breaker
            cursor["key"] = key
        return cursor


def _param(value: Any) -> ParamValue:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
