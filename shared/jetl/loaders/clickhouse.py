"""ClickHouse loader (clickhouse-connect): `chdb:///path` in-process, or an HTTP(S) server URL.

The table is created from the record model. Every insert carries `insert_deduplication_token = batch_id` on a
table created with a deduplication window, so a redelivered or replayed batch is not loaded twice.
"""

from __future__ import annotations

import re
import threading
import types
import typing
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from jetl.errors import ConfigError, DestinationUnavailable, TerminalError
from jetl.protocols import LoadContext, Record
from jetl.settings import ClickHouseSettings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEDUP_WINDOW = 10_000


class LowCardinality:
    """Marker: `Annotated[str, LowCardinality()]` makes the column LowCardinality(String)."""


def quote(ident: str) -> str:
    """Validate and back-quote an identifier."""
    if not _IDENT.match(ident):
        raise ConfigError(f"invalid ClickHouse identifier {ident!r}")
    return f"`{ident}`"


def ch_type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """The ClickHouse type for a Python annotation."""
    metadata = list(metadata or [])
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return ch_type(base, metadata + extra)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            inner = ch_type(args[0], metadata)
            if inner.startswith("LowCardinality("):
                return f"LowCardinality(Nullable({inner[15:-1]}))"
            return f"Nullable({inner})"
        return "String"
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        return f"Array({ch_type(args[0]) if args else 'String'})"
    if origin is Literal:
        return "LowCardinality(String)"
    low = any(isinstance(m, LowCardinality) or m is LowCardinality for m in metadata)
    if annotation is bool:
        return "Bool"
    if annotation is int:
        return "Int64"
    if annotation is float:
        return "Float64"
    if annotation is str:
        return "LowCardinality(String)" if low else "String"
    if annotation is datetime:
        return "DateTime64(6, 'UTC')"
    if annotation is date:
        return "Date32"
    if annotation is Decimal:
        digits = next((getattr(m, "max_digits", None) for m in metadata if getattr(m, "max_digits", None)), 38)
        places = next((getattr(m, "decimal_places", None) for m in metadata
                       if getattr(m, "decimal_places", None) is not None), 9)
        return f"Decimal({digits}, {places})"
    if annotation is UUID:
        return "UUID"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "LowCardinality(String)"
    return "String"  # dicts, nested models: stored as JSON text


def columns_for(model: type[BaseModel]) -> list[tuple[str, str]]:
    """(name, ClickHouse type) per model field."""
    return [(name, ch_type(f.annotation, list(f.metadata))) for name, f in model.model_fields.items()]


_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def get_client(dsn: str, settings: ClickHouseSettings | None = None) -> Any:
    """One clickhouse-connect client per DSN per process (a chdb folder may be opened by one process only)."""
    with _LOCK:
        if dsn not in _CLIENTS:
            import clickhouse_connect

            kwargs: dict[str, Any] = {"dsn": dsn}
            if settings and not dsn.startswith("chdb:"):
                if settings.user:
                    kwargs["username"] = settings.user
                if settings.password:
                    kwargs["password"] = settings.password.get_secret_value()
                kwargs["secure"] = settings.secure
            try:
                _CLIENTS[dsn] = clickhouse_connect.get_client(**kwargs)
            except Exception as exc:
                raise DestinationUnavailable(f"cannot open ClickHouse at {dsn}: {exc}") from exc
        return _CLIENTS[dsn]


def close_clients() -> None:
    """Close every cached client (a process that is done with chdb frees its folder)."""
    with _LOCK:
        for c in _CLIENTS.values():
            try:
                c.close()
            except Exception:
                pass
        _CLIENTS.clear()


class ClickHouseLoader:
    """Insert batches into `table`, created from the pipeline's model; `mode="merge"` dedups by key."""

    def __init__(
        self,
        table: str,
        *,
        dsn: str | None = None,
        database: str | None = None,
        order_by: list[str] | None = None,
        mode: Literal["append", "merge"] = "append",
        version_column: str | None = None,
        partition_by: str | None = None,
    ) -> None:
        quote(table)
        if mode == "merge" and not order_by:
            raise ConfigError("ClickHouseLoader: mode='merge' needs order_by (the key rows are merged on)")
        self.table = table
        self.dsn = dsn
        self.database = database
        self.order_by = list(order_by or [])
        self.mode = mode
        self.version_column = version_column
        self.partition_by = partition_by
        self.settings = ClickHouseSettings()
        self._ready: set[str] = set()
        self._model: type[BaseModel] | None = None

    def __repr__(self) -> str:
        return f"ClickHouseLoader({self.table!r})"

    def open(self, dsn: str, settings: ClickHouseSettings | None = None) -> None:
        """Bind to the configured destination (the loader service calls this with its settings)."""
        if self.dsn is None:
            self.dsn = dsn
        if settings is not None:
            self.settings = settings
            self.database = self.database or settings.database

    def check_schema(self, model: type[BaseModel]) -> None:
        """Fail at start-up when the key columns are not in the model."""
        names = set(model.model_fields)
        for col in [*self.order_by, *( [self.version_column] if self.version_column else [])]:
            if col not in names:
                raise ConfigError(f"ClickHouseLoader({self.table}): column {col!r} is not a field of {model.__name__}")
        self._model = model

    @property
    def qualified(self) -> str:
        """`db`.`table`."""
        return f"{quote(self.database)}.{quote(self.table)}" if self.database else quote(self.table)

    def describe(self) -> str:
        """Where rows go."""
        return f"clickhouse:{self.dsn or ''}#{self.table}"

    def client(self) -> Any:
        """The connected client."""
        if not self.dsn:
            raise ConfigError(f"ClickHouseLoader({self.table}): no DSN; the loader service binds one")
        return get_client(self.dsn, self.settings)

    def ddl(self, model: type[BaseModel], table: str | None = None) -> str:
        """CREATE TABLE for the model."""
        cols = ",\n  ".join(f"{quote(n)} {t}" for n, t in columns_for(model))
        name = self.qualified if table is None else quote(table)
        order = ", ".join(quote(c) for c in self.order_by) or "tuple()"
        if self.mode == "merge":
            engine = f"ReplacingMergeTree({quote(self.version_column)})" if self.version_column else "ReplacingMergeTree"
        else:
            engine = "MergeTree"
        part = f"\nPARTITION BY {self.partition_by}" if self.partition_by else ""
        return (f"CREATE TABLE IF NOT EXISTS {name} (\n  {cols}\n) ENGINE = {engine}{part}\nORDER BY ({order})\n"
                f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}")

    def ensure_table(self, model: type[BaseModel]) -> None:
        """Create the database and table if missing (idempotent)."""
        key = self.qualified
        if key in self._ready:
            return
        c = self.client()
        try:
            if self.database:
                c.command(f"CREATE DATABASE IF NOT EXISTS {quote(self.database)}")
            c.command(self.ddl(model))
        except Exception as exc:
            raise _wrap(exc, f"creating {key}") from exc
        self._ready.add(key)

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Column-oriented insert with the batch id as the dedup token."""
        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        self.ensure_table(model)
        if not records:
            return 0
        names = list(model.model_fields)
        columns = [[r.get(n) for r in records] for n in names]
        try:
            self.client().insert(self.qualified, columns, column_names=names, column_oriented=True,
                                 settings={"insert_deduplication_token": ctx.batch_id})
        except Exception as exc:
            raise _wrap(exc, f"inserting batch {ctx.batch_id} into {self.qualified}") from exc
        return len(records)

    def count(self) -> int:
        """Rows in the table (0 when it does not exist yet)."""
        try:
            return int(self.client().command(f"SELECT count() FROM {self.qualified}"))
        except Exception as exc:
            if "UNKNOWN_TABLE" in str(exc) or "doesn't exist" in str(exc):
                return 0
            raise _wrap(exc, f"counting {self.qualified}") from exc


def _wrap(exc: Exception, doing: str) -> Exception:
    text = str(exc)
    terminal_markers = ("TYPE_MISMATCH", "CANNOT_PARSE", "ILLEGAL_TYPE", "UNKNOWN_IDENTIFIER", "SYNTAX_ERROR",
                        "NO_SUCH_COLUMN", "Code: 53", "Code: 27", "Code: 62", "Code: 47", "TypeError", "ValueError")
    if isinstance(exc, (TypeError, ValueError)) or any(m in text for m in terminal_markers):
        return TerminalError(f"ClickHouse rejected {doing}: {text[:500]}")
    return DestinationUnavailable(f"ClickHouse failed {doing}: {text[:500]}")
