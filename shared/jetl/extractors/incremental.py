"""`Incremental`: one declaration of incremental loading, shared by the connectors that keep a cursor (as dlt's
`dlt.sources.incremental` is).

A run reads only what lies strictly after the position the last completed run reached: the `field`'s value, then
the `tie_breaker`'s, so records sharing a value are neither read twice nor skipped. How a connector reads after a
position is its own: the database extractor puts it in its WHERE clause, the HTTP extractor sends the value as the
query parameter `param` and drops the records at or before the position the API sends back again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from jetl.errors import ConfigError

_POSITION_TYPES = (str, int, float, Decimal, date, uuid.UUID)
"""What a first run's `initial` may be: values that order (a datetime is a date)."""


@dataclass(frozen=True)
class Incremental:
    """Read only what lies after the position the last completed run reached.

    `field`: the record field (a dotted path into an API's records) or column (a database's) that orders changes,
    such as `updated_at`. `tie_breaker`: a field unique among the records (`id`), ordering those that share a
    `field` value; without it every record at the last value counts as read, so declare one whenever values
    repeat (a database table's single-column primary key is taken when none is declared). `initial`: where the
    very first run starts (records at it are kept); None: from the beginning. `param`: for an HTTP API, the query
    parameter the cursor value is sent in (`updated_since`); a database needs none.

    Example:
        HttpExtractor(url, incremental=Incremental("updated_at", tie_breaker="id", param="updated_since"))
        DatabaseExtractor(url, table="orders", incremental=Incremental("updated_at", tie_breaker="id"))
    """

    field: str
    tie_breaker: str | None = None
    initial: Any = None
    param: str | None = None

    def __post_init__(self) -> None:
        for name in ("field", "tie_breaker", "param"):
            value = getattr(self, name)
            if (value is not None or name == "field") and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"Incremental: {name} must be a non-empty name, not {value!r}")
        if self.initial is not None and (
            isinstance(self.initial, bool) or not isinstance(self.initial, _POSITION_TYPES)
        ):
            raise ConfigError(
                f"Incremental: initial must be a string, number or datetime (a position), not {self.initial!r}"
            )
