"""ClickHouse loader (clickhouse-connect): `chdb:///path` in-process, or an HTTP(S) server URL.

The table is created from the record model (see `ch_type` for the mapping). Every insert carries
`insert_deduplication_token = batch_id` on a table created with a deduplication window, so a redelivered or replayed
batch is not loaded twice. `mode="merge"` makes a ReplacingMergeTree keyed on `order_by` (newest `version_column`
wins), so re-loading a changed row leaves one row once merged (`SELECT ... FINAL`).

chdb limitation: the embedded engine can open one folder per process at a time. A second, different `chdb://` DSN
in the same process fails (`EmbeddedServer already initialized with path ...`) until `close_clients()` has closed
the first; this module keeps one client per DSN in `_CLIENTS` for that reason. Tests that use chdb share one folder
per test module (unique table names per test) and call `close_clients()` when done; another process reads the
folder with `jetl.testing.chdb.query`.

Lineage: every table has one more column, `_jetl_batch_id` (the batch that wrote the row, `<run_id>/<seq>`), like
dlt's `_dlt_load_id`. It is what lets a replay replace exactly its parent's batches (`remove_batch`), a `--diff`
compare a shadow table with exactly the rows the parent run loaded, and `jetl counts` check the destination per run.
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import types
import typing
import zoneinfo
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

import pydantic
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from jetl.errors import ConfigError, DestinationUnavailable, TerminalError
from jetl.messages import dumps
from jetl.protocols import Diff, LoadContext, Loader, Record
from jetl.settings import ClickHouseSettings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARTITION = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\(\s*)?[A-Za-z_][A-Za-z0-9_]*(?:\s*\))?$")
DEDUP_WINDOW = 10_000
LINEAGE = "_jetl_batch_id"
LINEAGE_TYPE = "LowCardinality(String)"
"""One value a batch: a dictionary of one string, in the table and in the inserted Arrow column. Inserting 300k rows
into chdb, CPU: a plain String column of the batch id 0.20-0.23 s, this 0.15 s (the same as no lineage column);
tables made by an earlier version keep their String column, which a dictionary column fills at 0.17 s."""


def lineage_array(batch_id: str, n: int) -> Any:
    """The lineage column of an `n`-row batch, as a dictionary array built from buffers: pa.array, pa.scalar and
    pa.repeat import pandas, 50 MB of RSS that nothing else on the loader's path needs."""
    import pyarrow as pa

    value = batch_id.encode()
    dictionary = pa.StringArray.from_buffers(1, pa.py_buffer(array("i", [0, len(value)])), pa.py_buffer(value))
    indices = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(bytes(4 * n))])
    return pa.DictionaryArray.from_arrays(indices, dictionary)


"""The column that names the batch each row came from."""

Convert = Callable[[Any], Any]
_DATETIMES = (datetime, pydantic.AwareDatetime, pydantic.NaiveDatetime, pydantic.PastDatetime, pydantic.FutureDatetime)
_DATES = (date, pydantic.PastDate, pydantic.FutureDate)


class LowCardinality:
    """Marker: `Annotated[str, LowCardinality()]` makes the column LowCardinality(String)."""


@dataclass(frozen=True)
class Timezone:
    """Marker: `Annotated[datetime, Timezone("Europe/Berlin")]` makes the column DateTime64(6, 'Europe/Berlin')."""

    name: str
    precision: int = 6

    def __post_init__(self) -> None:
        try:
            zoneinfo.ZoneInfo(self.name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"Timezone: unknown time zone {self.name!r}") from exc
        if not 0 <= self.precision <= 9:
            raise ConfigError(f"Timezone: precision must be 0..9, got {self.precision}")


def quote(ident: str) -> str:
    """Validate and back-quote an identifier."""
    if not isinstance(ident, str) or not _IDENT.match(ident):
        raise ConfigError(f"invalid ClickHouse identifier {ident!r}")
    return f"`{ident}`"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flat_metadata(metadata: list[Any]) -> list[Any]:
    """Constraints may sit in a FieldInfo nested in `Annotated` (e.g. `Annotated[Decimal, Field(...)] | None`)."""
    out: list[Any] = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out.extend(_flat_metadata(list(m.metadata)))
        elif m is not None:
            out.append(m)
    return out


def _meta(metadata: list[Any], attr: str) -> Any:
    return next((getattr(m, attr) for m in metadata if getattr(m, attr, None) is not None), None)


def _text(v: Any) -> Any:
    """Values of a String column: text as it is, structures as JSON text, anything else as str()."""
    if v is None or isinstance(v, str | bytes):
        return v
    if isinstance(v, dict | list | tuple | set | frozenset | BaseModel | bool | int | float | Decimal):
        return dumps(v).decode()
    return str(v)


def _nullable(conv: Convert | None) -> Convert | None:
    if conv is None:
        return None
    return lambda v: None if v is None else conv(v)


def _utc_if_naive(v: Any) -> Any:
    if isinstance(v, datetime) and v.tzinfo is None:
        return v.replace(tzinfo=UTC)  # naive datetimes are UTC in jetl, whatever the process's local zone
    return v


def _enum(cls: type[Enum]) -> tuple[str, Convert]:
    members = list(cls)
    if not members:
        raise ConfigError(f"enum {cls.__name__} has no members")
    labels = {m: (m.value if isinstance(m.value, str) else m.name) for m in members}
    width = 8 if len(members) <= 127 else 16
    body = ", ".join(f"{_literal(labels[m])} = {i}" for i, m in enumerate(members, start=1))

    def conv(v: Any) -> Any:
        if isinstance(v, cls):
            return labels[v]
        try:
            return labels[cls(v)]
        except ValueError:
            return labels[cls[v]]  # by name; a KeyError here is a record that never matched the enum

    return f"Enum{width}({body})", conv


def ch_column(annotation: Any, metadata: list[Any] | None = None) -> tuple[str, Convert | None]:
    """The ClickHouse type for a Python annotation, and how to convert a value for it (None: as it is).

    | Python (pydantic) | ClickHouse |
    |---|---|
    | `X \\| None` | `Nullable(X)`, `LowCardinality(Nullable(String))`; arrays/maps never Nullable (None: empty) |
    | `Annotated[str, LowCardinality()]` | `LowCardinality(String)` |
    | `datetime` / `Annotated[datetime, Timezone("Europe/Berlin")]` | `DateTime64(6, 'UTC')` / `(6, 'Europe/Berlin')` |
    | `Decimal` with `max_digits`/`decimal_places` | `Decimal(p, s)` (default 38, 9) |
    | `list[X]`, `set[X]`, `tuple[X, ...]` / `tuple[X, Y]` / `dict[str, X]` | `Array(X)` / `Tuple` / `Map(String, X)` |
    | `bool`, `int`, `float`, `str`, `date`, `UUID` | `Bool`, `Int64`, `Float64`, `String`, `Date32`, `UUID` |
    | an `Enum` | `Enum8('label' = 1, ...)` (labels: string values, else member names) |
    | `Literal[...]` of str / int | `LowCardinality(String)` / `Int64` |
    | nested models, `dict`, `Any`, the rest | `String` holding JSON text |
    """
    metadata = _flat_metadata(list(metadata or []))
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return ch_column(base, metadata + list(extra))
    if origin in (typing.Union, types.UnionType):
        all_args = typing.get_args(annotation)
        args = [a for a in all_args if a is not type(None)]
        if len(args) == 1 and len(all_args) == 2:
            inner, conv = ch_column(args[0], metadata)
            if inner.startswith(("Array(", "Map(")):
                empty: Any = [] if inner.startswith("Array(") else {}
                return inner, (lambda v: empty if v is None else (conv(v) if conv else v))
            if inner.startswith("Tuple("):
                return "Nullable(String)", _text
            if inner.startswith("Nullable("):
                return inner, conv
            if inner.startswith("LowCardinality("):
                return f"LowCardinality(Nullable({inner[15:-1]}))", _nullable(conv)
            return f"Nullable({inner})", _nullable(conv)
        return "Nullable(String)", _text  # a union of several types: JSON text
    if origin in (list, set, frozenset) or (origin is tuple and typing.get_args(annotation)[1:] == (Ellipsis,)):
        elem = typing.get_args(annotation)
        inner, conv = ch_column(elem[0]) if elem else ("String", _text)
        if conv is None:
            return f"Array({inner})", (list if origin in (set, frozenset) else None)
        return f"Array({inner})", (lambda v, c=conv: [c(x) for x in v])
    if origin is tuple:
        parts = [ch_column(a) for a in typing.get_args(annotation)]
        convs = [c for _, c in parts]

        def tup(v: Any) -> Any:
            return tuple(c(x) if c else x for c, x in zip(convs, v, strict=True))

        return f"Tuple({', '.join(t for t, _ in parts)})", (tup if any(convs) else tuple)
    if origin is dict:
        key, value = typing.get_args(annotation) or (Any, Any)
        if key is str:
            inner, conv = ch_column(value)
            if conv is None:
                return f"Map(String, {inner})", None
            return f"Map(String, {inner})", (lambda v, c=conv: {k: c(x) for k, x in v.items()})
        return "String", _text
    if origin is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, bool) for v in values):
            return "Bool", None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "Int64", None
        if all(isinstance(v, str) for v in values):
            return "LowCardinality(String)", None
        return "String", _text
    low = any(isinstance(m, LowCardinality) or m is LowCardinality for m in metadata)
    if annotation is bool:
        return "Bool", None
    if annotation is int:
        return "Int64", None
    if annotation is float:
        return "Float64", None
    if annotation in (str, bytes):
        return ("LowCardinality(String)" if low else "String"), None
    if annotation in _DATETIMES:
        tz = next((m for m in metadata if isinstance(m, Timezone)), None) or Timezone("UTC")
        return f"DateTime64({tz.precision}, {_literal(tz.name)})", _utc_if_naive
    if annotation in _DATES:
        return "Date32", None
    if annotation is time:
        return "String", lambda v: v.isoformat() if isinstance(v, time) else v
    if annotation is timedelta:
        return "Float64", lambda v: v.total_seconds() if isinstance(v, timedelta) else v
    if annotation is Decimal:
        digits = _meta(metadata, "max_digits") or 38
        places = _meta(metadata, "decimal_places")
        places = min(9, digits) if places is None else places
        if not 1 <= digits <= 76 or not 0 <= places <= digits:
            raise ConfigError(f"Decimal({digits}, {places}) is out of ClickHouse's range (precision 1..76)")
        return f"Decimal({digits}, {places})", None
    if annotation is UUID or (isinstance(annotation, type) and issubclass(annotation, UUID)):
        return "UUID", lambda v: v if isinstance(v, UUID) else UUID(str(v))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _enum(annotation)
    if annotation is Any or annotation is object:
        return "Nullable(String)", _text
    return "String", _text  # dicts, nested models: stored as JSON text


def ch_type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """The ClickHouse type for a Python annotation (see `ch_column`)."""
    return ch_column(annotation, metadata)[0]


def columns_for(model: type[BaseModel]) -> list[tuple[str, str]]:
    """(name, ClickHouse type) per model field."""
    return [(name, ch_type(f.annotation, list(f.metadata))) for name, f in model.model_fields.items()]


def converters_for(model: type[BaseModel]) -> list[tuple[str, Convert | None]]:
    """(name, value converter or None) per model field, in column order."""
    return [(name, ch_column(f.annotation, list(f.metadata))[1]) for name, f in model.model_fields.items()]


# ClickHouse column types (inside Nullable / LowCardinality) whose validated Python values pyarrow converts exactly.
_ARROW_TYPES = {"Int64": "int64", "Float64": "float64", "Bool": "bool_", "String": "string", "Date32": "date32"}


def arrow_types_for(model: type[BaseModel]) -> list[Any] | None:
    """pyarrow type per model field when every column goes into insert_arrow as it is; None when one needs a
    converter (Decimal, Enum, UUID, JSON text, containers, ...): those batches take the column-oriented insert."""
    import pyarrow as pa

    out: list[Any] = []
    for f in model.model_fields.values():
        ch, conv = ch_column(f.annotation, list(f.metadata))
        base = ch.removeprefix("LowCardinality(").removesuffix(")") if ch.startswith("LowCardinality(") else ch
        base = base.removeprefix("Nullable(").removesuffix(")") if base.startswith("Nullable(") else base
        if conv is None and base in _ARROW_TYPES:
            out.append(getattr(pa, _ARROW_TYPES[base])())
        elif conv is _utc_if_naive and base == "DateTime64(6, 'UTC')":
            out.append(pa.timestamp("us", tz="UTC"))  # pyarrow reads a naive datetime as UTC, as _utc_if_naive does
        else:
            return None
    return out


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
            with contextlib.suppress(Exception):
                c.close()
        _CLIENTS.clear()


class ClickHouseLoader:
    """Insert batches into `table`, created from the pipeline's model; `mode="merge"` keeps one row per key.

    `partition_by` is a column or one function of a column (`toYYYYMM(ordered_at)`).
    """

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
        if database is not None:
            quote(database)
        for col in [*(order_by or []), *([version_column] if version_column else [])]:
            quote(col)
        if mode not in ("append", "merge"):
            raise ConfigError(f"ClickHouseLoader: mode must be 'append' or 'merge', got {mode!r}")
        if mode == "merge" and not order_by:
            raise ConfigError("ClickHouseLoader: mode='merge' needs order_by (the key rows are merged on)")
        if version_column and mode != "merge":
            raise ConfigError("ClickHouseLoader: version_column only applies to mode='merge'")
        if partition_by is not None and not _PARTITION.match(partition_by):
            raise ConfigError(f"ClickHouseLoader: partition_by must be a column or f(column), got {partition_by!r}")
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
        self._converters: dict[type[BaseModel], list[tuple[str, Convert | None]]] = {}
        self._arrow_types: dict[type[BaseModel], list[Any] | None] = {}

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
        """Fail at start-up when a key column is missing or nullable, or a field has no usable type."""
        try:
            types_ = dict(columns_for(model))
        except ConfigError as exc:
            raise ConfigError(f"ClickHouseLoader({self.table}): {model.__name__}: {exc}") from exc
        for col in [*self.order_by, *([self.version_column] if self.version_column else [])]:
            if col not in types_:
                raise ConfigError(f"ClickHouseLoader({self.table}): column {col!r} is not a field of {model.__name__}")
            if "Nullable(" in types_[col]:
                raise ConfigError(f"ClickHouseLoader({self.table}): key column {col!r} may not be optional")
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
        engine = "MergeTree"
        if self.mode == "merge":
            engine = f"ReplacingMergeTree({quote(self.version_column) if self.version_column else ''})"
        part = f"\nPARTITION BY {self.partition_by}" if self.partition_by else ""
        cols += f",\n  {quote(LINEAGE)} {LINEAGE_TYPE} DEFAULT ''"
        return (
            f"CREATE TABLE IF NOT EXISTS {name} (\n  {cols}\n) ENGINE = {engine}{part}\nORDER BY ({order})\n"
            f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
        )

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
            # a table created before the lineage column existed gets it (its old rows read as "")
            c.command(f"ALTER TABLE {key} ADD COLUMN IF NOT EXISTS {quote(LINEAGE)} {LINEAGE_TYPE} DEFAULT ''")
        except Exception as exc:
            raise _wrap(exc, f"creating {key}") from exc
        self._ready.add(key)

    def columns(self, records: list[Record], model: type[BaseModel]) -> tuple[list[str], list[list[Any]]]:
        """Column names and column-oriented values, converted for their ClickHouse types."""
        specs = self._converters.get(model)
        if specs is None:
            specs = self._converters[model] = converters_for(model)
        names = [n for n, _ in specs]
        try:
            columns = [[conv(r.get(n)) for r in records] if conv else [r.get(n) for r in records] for n, conv in specs]
        except Exception as exc:  # a value the column type cannot hold: bad data, retrying will not help
            raise TerminalError(
                f"ClickHouseLoader({self.table}): cannot convert a value: {type(exc).__name__}: {exc}"
            ) from exc
        return names, columns

    def arrow(self, records: list[Record], model: type[BaseModel], batch_id: str) -> Any | None:
        """The batch as an Arrow table (lineage column included), or None when a column or a value needs the
        column-oriented insert's converters."""
        if model not in self._arrow_types:
            self._arrow_types[model] = arrow_types_for(model)
        types_ = self._arrow_types[model]
        if types_ is None:
            return None
        import pyarrow as pa

        names = list(model.model_fields)
        try:
            arrays = [pa.array([r.get(n) for r in records], type=t) for n, t in zip(names, types_, strict=True)]
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return None  # a value Arrow does not take as it is: the column-oriented insert converts or rejects it
        arrays.append(lineage_array(batch_id, len(records)))
        return pa.Table.from_arrays(arrays, names=[*names, LINEAGE])

    def load_arrow(self, table: Any, ctx: LoadContext) -> int:
        """Insert an Arrow table of the model's fields as it is (a clean batch that travelled as Arrow), with the
        lineage column added and the batch id as the dedup token."""

        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        self.ensure_table(model)
        if not table.num_rows:
            return 0
        try:
            self.client().insert_arrow(
                self.qualified,
                table.append_column(LINEAGE, lineage_array(ctx.batch_id, table.num_rows)),
                settings={"insert_deduplication_token": ctx.batch_id},
            )
        except Exception as exc:
            raise _wrap(exc, f"inserting batch {ctx.batch_id} into {self.qualified}") from exc
        return int(table.num_rows)

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Arrow insert (column-oriented when a column needs converting) with the batch id as the dedup token."""
        # Measured on the benchmark's 6 columns (int, DateTime64, strings, float; 80k rows, chdb, CPU per row):
        # column-oriented insert of Python values 0.9 (converting) + 9.8 us; Arrow arrays 1.6 + insert_arrow 0.7 us.
        # Once validation stopped building models (jetl._internal.records) the insert was most of the stage.
        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        self.ensure_table(model)
        if not records:
            return 0
        table = self.arrow(records, model, ctx.batch_id)
        if table is None:
            names, columns = self.columns(records, model)
            names, columns = [*names, LINEAGE], [*columns, [ctx.batch_id] * len(records)]
        try:
            if table is not None:
                self.client().insert_arrow(self.qualified, table, settings={"insert_deduplication_token": ctx.batch_id})
            else:
                self.client().insert(
                    self.qualified,
                    columns,
                    column_names=names,
                    column_oriented=True,
                    settings={"insert_deduplication_token": ctx.batch_id},
                )
        except Exception as exc:
            raise _wrap(exc, f"inserting batch {ctx.batch_id} into {self.qualified}") from exc
        return len(records)

    def count(self, *, final: bool = False) -> int:
        """Rows in the table (0 when it does not exist yet); `final` counts rows as merged (one per key)."""
        try:
            return int(self.client().command(f"SELECT count() FROM {self.qualified}{' FINAL' if final else ''}"))
        except Exception as exc:
            if "UNKNOWN_TABLE" in str(exc) or "doesn't exist" in str(exc):
                return 0
            raise _wrap(exc, f"counting {self.qualified}") from exc

    # Lineage: what replay, diff and the ledger need from the destination (jetl.protocols.LineageLoader).

    def rows_by_run(self, pipeline: str) -> dict[str, int]:
        """Rows per run id that wrote them ("" for rows loaded before the lineage column existed)."""
        sql = f"SELECT splitByChar('/', {quote(LINEAGE)})[1] AS run, count() AS n FROM {self.qualified} GROUP BY run"
        try:
            return {str(run): int(n) for run, n in self.client().query(sql).result_rows}
        except Exception as exc:
            if _missing_table(exc):
                return {}
            raise _wrap(exc, f"counting {self.qualified} by run") from exc

    def remove_batch(self, pipeline: str, batch_id: str) -> None:
        """Delete the rows one batch wrote (a lightweight DELETE; deleting nothing is fine)."""
        try:
            self.client().command(f"DELETE FROM {self.qualified} WHERE {quote(LINEAGE)} = {_literal(batch_id)}")
        except Exception as exc:
            if _missing_table(exc):
                return
            raise _wrap(exc, f"removing batch {batch_id} from {self.qualified}") from exc

    def shadow_table(self, run_id: str) -> str:
        """The side table a shadow run writes to: `<table>__shadow_<run id>`."""
        return f"{self.table}__shadow_{re.sub(r'[^A-Za-z0-9_]', '_', run_id)}"

    def shadow(self, run_id: str) -> Loader:
        """The same loader writing to this run's shadow table (created like the real one)."""
        twin = copy.copy(self)
        twin.table = self.shadow_table(run_id)
        twin._ready = set()
        return twin

    def drop_shadow(self, pipeline: str, run_id: str) -> None:
        """Drop a run's shadow table."""
        twin = self.shadow(run_id)
        assert isinstance(twin, ClickHouseLoader)
        try:
            self.client().command(f"DROP TABLE IF EXISTS {twin.qualified}")
        except Exception as exc:
            raise _wrap(exc, f"dropping {twin.qualified}") from exc

    def diff(self, pipeline: str, parent_run_id: str, shadow_run_id: str, sample: int = 10) -> Diff:
        """The shadow of `shadow_run_id` against the rows `parent_run_id` has in the real table, by `order_by`.

        Rows are compared by a hash of every model column; with no `order_by`, whole rows are matched (as a
        multiset), so a change shows as one row removed and one added.
        """
        if self._model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        twin = self.shadow(shadow_run_id)
        assert isinstance(twin, ClickHouseLoader)
        cols = ", ".join(quote(n) for n in self._model.model_fields)
        parent = f"startsWith({quote(LINEAGE)}, {_literal(parent_run_id + '/')})"
        key = [quote(k) for k in self.order_by]
        if key:
            keys = ", ".join(key)
            shown = key[0] if len(key) == 1 else f"tuple({keys})"
            sql = (
                f"SELECT multiIf(p._has = 0, 'added', s._has = 0, 'removed', p._h != s._h, 'changed', 'unchanged')"
                f" AS kind, count() AS n, groupArray({int(sample)})({shown}) AS keys FROM"
                f" (SELECT {keys}, cityHash64({cols}) AS _h, 1 AS _has FROM {self.qualified} WHERE {parent}) AS p"
                f" FULL OUTER JOIN (SELECT {keys}, cityHash64({cols}) AS _h, 1 AS _has FROM {twin.qualified}) AS s"
                f" USING ({keys}) GROUP BY kind"
            )
        else:
            sql = (
                "SELECT sum(greatest(s._n, p._n) - p._n), sum(greatest(s._n, p._n) - s._n), sum(least(s._n, p._n))"
                f" FROM (SELECT cityHash64({cols}) AS _h, count() AS _n FROM {self.qualified} WHERE {parent}"
                f" GROUP BY _h) AS p FULL OUTER JOIN (SELECT cityHash64({cols}) AS _h, count() AS _n"
                f" FROM {twin.qualified} GROUP BY _h) AS s USING (_h)"
            )
        try:
            rows = self.client().query(sql).result_rows
        except Exception as exc:
            raise _wrap(exc, f"diffing {twin.qualified} against run {parent_run_id}") from exc
        if not key:
            added, removed, unchanged = (int(x or 0) for x in rows[0])
            rows = [("added", added, []), ("removed", removed, []), ("unchanged", unchanged, [])]
        out = Diff(key=list(self.order_by))
        for kind, n, keys in rows:
            setattr(out, str(kind), int(n))
            if kind != "unchanged" and keys:
                out.samples[str(kind)] = [list(k) if isinstance(k, tuple) else k for k in keys]
        return out


def _missing_table(exc: Exception) -> bool:
    return "UNKNOWN_TABLE" in str(exc) or "doesn't exist" in str(exc)


def _wrap(exc: Exception, doing: str) -> Exception:
    text = str(exc)
    terminal_markers = (
        "TYPE_MISMATCH",
        "CANNOT_PARSE",
        "ILLEGAL_TYPE",
        "UNKNOWN_IDENTIFIER",
        "SYNTAX_ERROR",
        "NO_SUCH_COLUMN",
        "Code: 53",
        "Code: 27",
        "Code: 62",
        "Code: 47",
        "TypeError",
        "ValueError",
    )
    if isinstance(exc, (TypeError, ValueError)) or any(m in text for m in terminal_markers):
        return TerminalError(f"ClickHouse rejected {doing}: {text[:500]}")
    return DestinationUnavailable(f"ClickHouse failed {doing}: {text[:500]}")
