"""Database extractor: any SQLAlchemy URL, a table or a SQL query, streamed through a server-side cursor.

Errors at this edge, mapped onto jetl's taxonomy (`jetl.errors`):

    OperationalError, InterfaceError, a DBAPIError     -> TransientError (server down, network, disconnect,
    that invalidated its connection, pool timeout         failover): the run is retried later
    no such table or column, a ProgrammingError,       -> ConfigError (the table or query cannot work as
    SQLSTATE class 42, SQLite "no such table"             written): named in the message, never retried
    any other DBAPIError (DataError, IntegrityError)   -> TerminalError
    a missing driver, a bad URL or option, a query     -> ConfigError, raised at construction
    whose bound parameters are not all supplied

Blocking SQLAlchemy calls run on one worker thread per run, a chunk at a time, so the event loop
(heartbeats, acks, other runs) stays responsive; one thread per run also keeps every call on a connection
on the same thread, which some drivers require.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, Result, Row

from jetl.errors import ConfigError, JetlError, TerminalError, TransientError
from jetl.protocols import Check, Chunk, ExtractContext, Record

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

__all__ = ["DatabaseExtractor"]

_T = TypeVar("_T")
INTERVAL_PARAMS = ("data_interval_start", "data_interval_end")
_HIGH_WATER = "jetl_high_water"
_SUBQUERY = "jetl_source"
_SQLITE_STATEMENT_ERRORS = (
    "no such table",
    "no such column",
    "syntax error",
    "ambiguous column",
    "no such function",
)
# Values the framework's encoder writes as they are; anything else is converted in `_plain`.
_NATIVE: frozenset[type] = frozenset(
    {str, int, float, bool, type(None), Decimal, datetime, date, time, uuid.UUID, dict, list}
)


def _plain(value: Any) -> Any:
    """A JSON-friendly stand-in for types the encoder lacks (bytes, intervals, network and range types)."""
    if type(value) in _NATIVE:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, Decimal, datetime, date, time, uuid.UUID, dict)):  # subclasses
        return value
    return str(value)


# --- high-water marks as JSON -------------------------------------------------------------------------------


def _dump(value: Any) -> tuple[Any, str]:
    """A high-water value as (JSON value, type tag), so the next run can rebuild the exact value."""
    if isinstance(value, datetime):
        return value.isoformat(), "datetime"
    if isinstance(value, date):
        return value.isoformat(), "date"
    if isinstance(value, Decimal):
        return str(value), "decimal"
    if isinstance(value, bool):
        raise TypeError("a boolean column cannot be a high-water mark")
    if isinstance(value, int):
        return value, "int"
    if isinstance(value, float):
        return value, "float"
    if isinstance(value, str):
        return value, "str"
    if isinstance(value, uuid.UUID):
        return str(value), "uuid"
    raise TypeError(f"a {type(value).__name__} value cannot be a high-water mark")


_LOADERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "decimal": Decimal,
    "int": int,
    "float": float,
    "str": str,
    "uuid": uuid.UUID,
}


def _load(value: Any, tag: str | None) -> Any:
    if value is None or tag is None:
        return value
    loader = _LOADERS.get(tag)
    if loader is None:
        raise ConfigError(f"the stored cursor has an unknown value type {tag!r}")
    try:
        return loader(value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ConfigError(f"the stored cursor value {value!r} is not a valid {tag}: {exc}") from exc


def _bind_type(value: Any) -> sa.types.TypeEngine[Any] | None:
    """The SQL type to bind a high-water value with in a text query, where no column type is known."""
    if isinstance(value, datetime):
        return sa.DateTime(timezone=value.tzinfo is not None)
    if isinstance(value, date):
        return sa.Date()
    if isinstance(value, Decimal):
        return sa.Numeric()
    return None


# --- errors -------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _statement_problem(exc: sa_exc.DBAPIError) -> bool:
    """The statement cannot work: SQLSTATE class 42 (syntax, undefined object, privilege) or SQLite kin."""
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(state, str) and state.startswith("42"):
        return True
    message = str(exc.orig).lower()
    return type(exc.orig).__module__.startswith("sqlite3") and any(m in message for m in _SQLITE_STATEMENT_ERRORS)


# --- the extractor ------------------------------------------------------------------------------


@dataclass
class _Stream:
    """One run's open connection and result; touched only on the run's worker thread."""

    connection: Connection
    result: Result[Any]
    keys: list[str]
    partitions: Any
    origin_keys: list[int] | None
    high_index: int | None
    high: Any
    rows: int = 0


class DatabaseExtractor:
    """Streams a table or a query from any SQLAlchemy database, in chunks of at most `chunk_size` rows.

    `query` takes bound parameters only (`:name`), from `params` plus `:data_interval_start` and
    `:data_interval_end` (the run's data interval). With `incremental_column`, each run reads only rows
    whose column is greater than the high-water mark the last completed run reached (`WHERE col > :hwm
    ORDER BY col`; a query is wrapped as a subquery for this). Rows committed later with a value at or below
    the mark (long transactions, clock skew) are not seen: use a column the database assigns at commit.

    Example:
        DatabaseExtractor("postgresql+psycopg://etl@db/shop", table="orders", incremental_column="updated_at")
    """

    def __init__(
        self,
        url: str | URL,
        *,
        table: str | None = None,
        schema: str | None = None,
        query: str | None = None,
        params: Mapping[str, Any] | None = None,
        columns: Sequence[str] | None = None,
        incremental_column: str | None = None,
        initial: Any = None,
        chunk_size: int = 5000,
        password: SecretStr | str | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (table is None) == (query is None):
            raise ConfigError("DatabaseExtractor: pass exactly one of table= or query=")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"DatabaseExtractor: chunk_size must be an integer of at least 1, not {chunk_size!r}")
        try:
            parsed = sa.make_url(url)
        except sa_exc.ArgumentError as exc:
            raise ConfigError(f"DatabaseExtractor: {url!r} is not a SQLAlchemy URL") from exc
        if password is not None:
            secret = password.get_secret_value() if isinstance(password, SecretStr) else password
            parsed = parsed.set(password=secret)
        self.url = parsed
        self.table = table
        self.schema = schema
        self.params = dict(params or {})
        self.columns = list(columns) if columns is not None else None
        self.incremental_column = incremental_column
        self.chunk_size = chunk_size
        self.query: str | None = None
        self._text: sa.TextClause | None = None
        self._interval_names: list[str] = []

        reserved = set(INTERVAL_PARAMS) | {_HIGH_WATER}
        taken = sorted(reserved & set(self.params))
        if taken:
            raise ConfigError(f"{self._where()}: params may not set {taken[0]!r}; jetl binds it")
        if incremental_column is not None and not incremental_column:
            raise ConfigError(f"{self._where()}: incremental_column is empty")
        if table is not None:
            if not table:
                raise ConfigError("DatabaseExtractor: table is empty")
            if schema is None and "." in table:
                self.schema, self.table = table.rsplit(".", 1)
            if self.params:
                raise ConfigError(f"{self._where()}: params are for query=, a table has nothing to bind them to")
            if self.columns is not None and not self.columns:
                raise ConfigError(f"{self._where()}: columns= is empty")
            if self.columns is not None and incremental_column and incremental_column not in self.columns:
                raise ConfigError(f"{self._where()}: columns= must include incremental_column {incremental_column!r}")
        else:
            assert query is not None
            self.query = query.strip().rstrip(";").rstrip()
            if not self.query:
                raise ConfigError("DatabaseExtractor: query is empty")
            if self.columns is not None or schema is not None:
                raise ConfigError(f"{self._where()}: columns= and schema= are for table=; select them in the query")
            self._text, self._interval_names = self._compile_query(self.query)
        self._initial = self._check_initial(initial)
        self._cursor: dict[str, Any] | None = None

        options: dict[str, Any] = {"pool_pre_ping": True}
        options.update(engine_options or {})
        try:
            self.engine: Engine = sa.create_engine(self.url, **options)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError, TypeError) as exc:
            raise ConfigError(f"{self._where()}: cannot make an engine: {exc}") from exc

    def _compile_query(self, query: str) -> tuple[sa.TextClause, list[str]]:
        """The query as a text clause, interval parameters typed; every other parameter must be supplied."""
        names = set(sa.text(query).compile().params)
        if _HIGH_WATER in names:
            raise ConfigError(f"{self._where()}: the query may not use :{_HIGH_WATER}; jetl binds it")
        missing = sorted(names - set(self.params) - set(INTERVAL_PARAMS))
        if missing:
            raise ConfigError(f"{self._where()}: no value for bound parameter(s) {', '.join(':' + m for m in missing)}")
        interval = [n for n in INTERVAL_PARAMS if n in names]
        clause = sa.text(query).bindparams(*(sa.bindparam(n, type_=sa.DateTime(timezone=True)) for n in interval))
        return clause, interval

    def _check_initial(self, initial: Any) -> Any:
        if initial is None:
            return None
        if self.incremental_column is None:
            raise ConfigError(f"{self._where()}: initial= needs incremental_column=")
        try:
            _dump(initial)
        except TypeError as exc:
            raise ConfigError(f"{self._where()}: initial={initial!r}: {exc}") from exc
        return initial

    def _name(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else str(self.table)

    def _where(self) -> str:
        """Names the source in messages: URL without password, then the table or the start of the query."""
        url = self.url.render_as_string(hide_password=True)
        if self.table is not None:
            return f"database {url} table {self._name()!r}"
        query = re.sub(r"\s+", " ", self.query or "")
        return f"database {url} query {query[:120] + ('...' if len(query) > 120 else '')!r}"

    def __repr__(self) -> str:
        return f"DatabaseExtractor({self._where()})"

    @property
    def keeps_cursor(self) -> bool:
        """Runs start from the high-water mark of `incremental_column` (see `jetl.protocols.Extractor`)."""
        return self.incremental_column is not None

    def next_cursor(self) -> dict[str, Any] | None:
        """`{"column": ..., "value": max seen, "type": ...}` after an incremental run; JSON-serialisable."""
        return None if self._cursor is None else dict(self._cursor)

    def check(self, settings: JetlSettings) -> Check:
        """ok once constructed: the URL, table or query and options were checked then; it does not connect."""
        return Check("ok", "configured")

    def dispose(self) -> None:
        """Close the engine's pooled connections (at shutdown)."""
        self.engine.dispose()

    # -- a run ------------------------------------------------------------------------------------

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """Run the table scan or query and yield its rows in chunks of at most `chunk_size`."""
        start = self._start_value(ctx)
        if self.incremental_column is not None:
            self._cursor = self._cursor_of(start)
        binds = {**self.params}
        for name in self._interval_names:
            value = ctx.data_interval_start if name == "data_interval_start" else ctx.data_interval_end
            if value is None:
                raise ConfigError(f"{self._where()}: the query uses :{name}, but run {ctx.run_id} has no data interval")
            binds[name] = value
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jetl-db")
        stream: _Stream | None = None
        try:
            stream = await self._call(worker, self._open, start, binds)
            while True:
                chunk = await self._call(worker, self._next_chunk, stream)
                if chunk is None:
                    break
                if self.incremental_column is not None:
                    self._cursor = self._cursor_of(stream.high)
                    assert chunk.position is not None
                    chunk.position["high_water"] = self._cursor["value"]
                yield chunk
        finally:
            if stream is not None:
                await asyncio.shield(self._call(worker, self._close, stream))
            worker.shutdown(wait=False)

    def _start_value(self, ctx: ExtractContext) -> Any:
        if self.incremental_column is None:
            return None
        cursor = ctx.cursor
        if not cursor:
            return self._initial
        if not isinstance(cursor, dict) or "value" not in cursor:
            raise ConfigError(f"{self._where()}: the stored cursor {cursor!r} has no 'value'")
        if cursor.get("column", self.incremental_column) != self.incremental_column:
            raise ConfigError(
                f"{self._where()}: the stored cursor tracks column {cursor.get('column')!r}, but the "
                f"extractor now tracks {self.incremental_column!r}; reset the pipeline's cursor to start over"
            )
        try:
            return _load(cursor["value"], cursor.get("type"))
        except ConfigError as exc:
            raise ConfigError(f"{self._where()}: {exc}") from exc

    def _cursor_of(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {"column": self.incremental_column, "value": None, "type": None}
        try:
            dumped, tag = _dump(value)
        except TypeError as exc:
            raise TerminalError(f"{self._where()}: column {self.incremental_column!r}: {exc}") from exc
        return {"column": self.incremental_column, "value": dumped, "type": tag}

    async def _call(self, worker: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn` on the run's worker thread with this task's context (log bindings); translate errors."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        try:
            return await loop.run_in_executor(worker, call)
        except sa_exc.SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sa_exc.SQLAlchemyError) -> JetlError:
        where = self._where()
        if isinstance(exc, sa_exc.NoSuchTableError):
            return ConfigError(f"{where}: no such table {str(exc)!r} (or no permission to see it)")
        if isinstance(exc, sa_exc.TimeoutError):
            return TransientError(f"{where}: no free connection in the pool: {exc}")
        if isinstance(exc, sa_exc.DBAPIError):
            detail = _first_line(exc)
            if _statement_problem(exc) or isinstance(exc, sa_exc.ProgrammingError):
                return ConfigError(f"{where}: the database rejects the statement: {detail}")
            if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
                return TransientError(f"{where}: database unavailable: {detail}")
            return TerminalError(f"{where}: {type(exc.orig).__name__}: {detail}")
        if isinstance(exc, sa_exc.StatementError):  # e.g. a value the column type cannot bind
            return ConfigError(f"{where}: {_first_line(exc)}")
        return TerminalError(f"{where}: {type(exc).__name__}: {exc}")

    # -- on the worker thread ---------------------------------------------------------------------

    def _open(self, start: Any, binds: dict[str, Any]) -> _Stream:
        connection = self.engine.connect()
        try:
            statement, origin_columns = self._statement(connection, start, binds)
            result = connection.execution_options(stream_results=True, yield_per=self.chunk_size).execute(
                statement, binds
            )
            keys = list(map(str, result.keys()))  # exact str: reflected names are quoted_name, orjson wants str
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                result.close()
                raise ConfigError(f"{self._where()}: the query returns column {twice[0]!r} twice; alias one of them")
            high_index = None
            if self.incremental_column is not None:
                if self.incremental_column not in keys:
                    result.close()
                    raise ConfigError(
                        f"{self._where()}: incremental column {self.incremental_column!r} is not among the "
                        f"columns returned ({', '.join(keys)})"
                    )
                high_index = keys.index(self.incremental_column)
            origin_keys = None
            if origin_columns and all(c in keys for c in origin_columns):
                origin_keys = [keys.index(c) for c in origin_columns]
            partitions = result.partitions(self.chunk_size)
            return _Stream(connection, result, keys, partitions, origin_keys, high_index, start)
        except BaseException:
            connection.close()
            raise

    def _statement(self, connection: Connection, start: Any, binds: dict[str, Any]) -> tuple[Any, list[str]]:
        """The SELECT to run, and the primary-key columns that name a row in its origin (tables only)."""
        column = self.incremental_column
        if self._text is not None:
            if column is None:
                return self._text, []
            source = self._text.columns(sa.column(column)).subquery(_SUBQUERY)
            statement: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(source)
            if start is not None:
                binds[_HIGH_WATER] = start
                bound = sa.bindparam(_HIGH_WATER, type_=_bind_type(start))
                statement = statement.where(source.c[column] > bound)
            return statement.order_by(source.c[column]), []

        assert self.table is not None
        table = sa.Table(self.table, sa.MetaData(), schema=self.schema, autoload_with=connection)
        known = list(table.c.keys())
        wanted = self.columns if self.columns is not None else known
        unknown = [c for c in [*wanted, *([column] if column else [])] if c not in known]
        if unknown:
            raise ConfigError(f"{self._where()}: no column {unknown[0]!r}; the table has {', '.join(known)}")
        statement = sa.select(*(table.c[c] for c in wanted))
        if column is not None:
            if start is not None:
                statement = statement.where(table.c[column] > start)
            statement = statement.order_by(table.c[column])
        return statement, [c.name for c in table.primary_key.columns]

    def _next_chunk(self, stream: _Stream) -> Chunk | None:
        """Fetch the next partition and turn it into JSON-friendly records with origins; None at the end."""
        rows: list[Row[Any]] | None = next(stream.partitions, None)
        if rows is None:
            return None
        keys = stream.keys
        records: list[Record] = [{k: _plain(v) for k, v in zip(keys, row, strict=True)} for row in rows]
        first = stream.rows + 1
        stream.rows += len(rows)
        if self.table is None:
            origins = [f"query row {first + i}" for i in range(len(rows))]
        elif stream.origin_keys is not None:
            picks = stream.origin_keys
            origins = [f"table {self._name()} " + ",".join(f"{keys[i]}={row[i]}" for i in picks) for row in rows]
        else:
            origins = [f"table {self._name()} row {first + i}" for i in range(len(rows))]
        if stream.high_index is not None:
            index, high = stream.high_index, stream.high
            for row in rows:
                value = row[index]
                try:
                    if value is not None and (high is None or value > high):
                        high = value
                except TypeError as exc:
                    raise TerminalError(
                        f"{self._where()}: column {self.incremental_column!r} mixes "
                        f"{type(value).__name__} and {type(high).__name__} values"
                    ) from exc
            stream.high = high
        return Chunk(records=records, origins=origins, position={"rows": stream.rows})

    def _close(self, stream: _Stream) -> None:
        try:
            stream.result.close()
            stream.connection.close()
        except sa_exc.SQLAlchemyError:  # the run's outcome is already decided; a failed close must not mask it
            stream.connection.invalidate()
