"""SQL text: identifiers and string literals quoted safely, and the CREATE TABLE a loader's table is made with.

Nothing here talks to a server; every statement jetl sends to ClickHouse is built from these pieces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from jetl.errors import ConfigError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PARTITION = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\(\s*)?[A-Za-z_][A-Za-z0-9_]*(?:\s*\))?$")
"""What `partition_by` may be: a column or one function of a column (`toYYYYMM(ordered_at)`)."""
DEDUP_WINDOW = 10_000
"""Inserts remembered per table for `insert_deduplication_token` (a redelivered batch within it is not loaded)."""


def quote(ident: str) -> str:
    """Validate and back-quote an identifier."""
    if not isinstance(ident, str) or not _IDENT.match(ident):
        raise ConfigError(f"invalid ClickHouse identifier {ident!r}")
    return f"`{ident}`"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_table(
    name: str,
    columns: Sequence[tuple[str, str]],
    *,
    order_by: Sequence[str],
    engine: str,
    partition_by: str | None,
) -> str:
    """CREATE TABLE IF NOT EXISTS `name` (already quoted) with (column, type) pairs, an `engine` keyed on
    `order_by`, and a deduplication window."""
    cols = ",\n  ".join(f"{quote(n)} {t}" for n, t in columns)
    order = ", ".join(quote(c) for c in order_by) or "tuple()"
    part = f"\nPARTITION BY {partition_by}" if partition_by else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {name} (\n  {cols}\n) ENGINE = {engine}{part}\nORDER BY ({order})\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    )
