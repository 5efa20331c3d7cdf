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
import contextlib
import contextvars
import functools
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, Result, Row

from jetl.errors import ConfigError, JetlError
from jetl.extractors.database.cursor import (
    _HIGH_KEY,
    _HIGH_WATER,
    _after,
    _compared,
    _cursor_of,
    _dump,
    _Position,
    _start_position,
    _text_tag,
    _through_clause,
    cursor_at,
)
from jetl.extractors.database.partitions import _in_range, _plan
from jetl.extractors.database.translate import _translate
from jetl.extractors.incremental import Incremental
from jetl.protocols import Check, Chunk, ExtractContext, Partition, Record
from jetl.redact import Secrets, redact_text, redact_url

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

__all__ = ["DatabaseExtractor"]

_T = TypeVar("_T")
INTERVAL_PARAMS = ("data_interval_start", "data_interval_end")
_SUBQUERY = "jetl_source"
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


# --- the extractor ------------------------------------------------------------------------------


@dataclass
class _Stream:
    """One run's open connection and result; touched only on the run's worker thread."""

    position: _Position | None
    """The start, then the last row read: where the next run starts."""
    key_column: str | None = None
    """The tie-breaker the position uses (the cursor column itself when that is unique)."""
    value_tag: str | None = None
    """The cursor's type tag when the value travels as source text (SQLite dates), else taken from the value."""
    connection: Connection = field(init=False)
    result: Result[Any] = field(init=False)
    keys: list[str] = field(init=False)
    partitions: Any = field(init=False)
    origin_keys: list[int] | None = field(init=False)
    rows: int = 0


class DatabaseExtractor:
    """Streams a table or a query from any SQLAlchemy database, in chunks of at most `chunk_size` rows.

    `query` takes bound parameters only (`:name`), from `params` plus `:data_interval_start` and
    `:data_interval_end` (the run's data interval). With `incremental=Incremental(column)`, each run reads only rows
    strictly after the position the last completed run reached: the column's value plus a tie-breaker, so
    rows sharing a value are neither read twice nor skipped (`WHERE col > :v OR (col = :v AND key > :k)
    ORDER BY col, key`; a query is wrapped as a subquery for this). The tie-breaker is the Incremental's
    `tie_breaker`, a column unique in the source, or else the table's single-column primary key; a query, or a
    table without one, must declare it, or the run fails with a ConfigError. `tie_breaker` may name the incremental
    column itself when that is unique on its own (an id, say): then the position is its value alone.

    Values are compared as the source stores and compares them: a text column's exact text, a timestamp with
    its time zone, SQLite dates and times as the text SQLite holds. Rows committed later with a position at
    or below the mark (long transactions, clock skew) are not seen: use a column the database assigns at
    commit.

    With `partition_rows`, a table's run splits into key ranges of about that many rows, for extractor replicas to
    share (`partitions`): ranges of `partition_column` (default: the table's single-column primary key), planned
    from the column's values within the run's window, each read `WHERE col >= lo AND col < hi` (the last one
    inclusive, the first one with the rows where it is NULL), in key order. An incremental run's window ends at the
    furthest position the planning read, which is the run's next cursor, so each partition reads the same rows every
    time it is extracted. Planning reads the column through its index once (a row number every `partition_rows`).

    Example:
        DatabaseExtractor("postgresql+psycopg://etl@db/shop", table="orders", incremental=Incremental("updated_at"))
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
        incremental: Incremental | None = None,
        chunk_size: int = 5000,
        partition_rows: int | None = None,
        partition_column: str | None = None,
        password: SecretStr | str | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (table is None) == (query is None):
            raise ConfigError("DatabaseExtractor: pass exactly one of table= or query=")
        if incremental is not None and not isinstance(incremental, Incremental):
            raise ConfigError(f"DatabaseExtractor: incremental={incremental!r} is not an Incremental")
        if incremental is not None and incremental.param is not None:
            raise ConfigError(
                "DatabaseExtractor: Incremental(param=...) is for HTTP APIs; a database reads after the cursor in "
                "its WHERE clause"
            )
        incremental_column = None if incremental is None else incremental.field
        tie_breaker = None if incremental is None else incremental.tie_breaker
        initial = None if incremental is None else incremental.initial
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"DatabaseExtractor: chunk_size must be an integer of at least 1, not {chunk_size!r}")
        try:
            parsed = sa.make_url(url)
        except (sa_exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
            # the text may hold a password: shown redacted, and the driver's error (which quotes it) not chained
            shown = redact_url(str(url)) if "://" in str(url) else "***"  # without a scheme, nothing says which part
            raise ConfigError(f"DatabaseExtractor: {shown!r} is not a SQLAlchemy URL (dialect://...)") from None
        if password is not None:
            secret = password.get_secret_value() if isinstance(password, SecretStr) else password
            parsed = parsed.set(password=secret)
        self.url = parsed
        Secrets([parsed.password])  # masked in every log line too, should a driver's message quote it bare
        self.table = table
        self.schema = schema
        self.params = dict(params or {})
        self.columns = list(columns) if columns is not None else None
        self.incremental = incremental
        self.incremental_column = incremental_column
        self.tie_breaker = tie_breaker
        self.chunk_size = chunk_size
        self.partition_rows = partition_rows
        self.partition_column = partition_column
        self.query: str | None = None
        self._text: sa.TextClause | None = None
        self._interval_names: list[str] = []

        reserved = set(INTERVAL_PARAMS) | {_HIGH_WATER, _HIGH_KEY}
        taken = sorted(reserved & set(self.params))
        if taken:
            raise ConfigError(f"{self._where()}: params may not set {taken[0]!r}; jetl binds it")
        if partition_rows is not None and (
            isinstance(partition_rows, bool) or not isinstance(partition_rows, int) or partition_rows < 1
        ):
            raise ConfigError(
                f"{self._where()}: partition_rows must be an integer of at least 1, not {partition_rows!r}"
            )
        if partition_column is not None and (not partition_column or partition_rows is None):
            raise ConfigError(f"{self._where()}: partition_column= needs partition_rows= and a column name")
        if partition_rows is not None and table is None:
            raise ConfigError(
                f"{self._where()}: partition_rows= splits a table by key ranges; a query has no key to split by "
                "(the run's next cursor could not be read before extracting it)"
            )
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
                raise ConfigError(
                    f"{self._where()}: columns= must include the incremental column {incremental_column!r}"
                )
        else:
            assert query is not None
            self.query = query.strip().rstrip(";").rstrip()
            if not self.query:
                raise ConfigError("DatabaseExtractor: query is empty")
            if self.columns is not None or schema is not None:
                raise ConfigError(f"{self._where()}: columns= and schema= are for table=; select them in the query")
            self._text, self._interval_names = self._compile_query(self.query)
            if incremental_column is not None and tie_breaker is None:
                raise ConfigError(
                    f"{self._where()}: an incremental query needs Incremental(tie_breaker=...), a column unique "
                    f"among its rows (or {incremental_column!r} itself if it is unique), so rows sharing a value are "
                    "read once"
                )
        self._initial = self._check_initial(initial)
        self._cursor: dict[str, Any] | None = None

        options: dict[str, Any] = {"pool_pre_ping": True}
        options.update(engine_options or {})
        try:
            self.engine: Engine = sa.create_engine(self.url, **options)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError, TypeError) as exc:
            raise ConfigError(
                f"{self._where()}: cannot make an engine: {redact_text(str(exc), self.url.password)}"
            ) from exc

    def _compile_query(self, query: str) -> tuple[sa.TextClause, list[str]]:
        """The query as a text clause, interval parameters typed; every other parameter must be supplied."""
        names = set(sa.text(query).compile().params)
        for name in (_HIGH_WATER, _HIGH_KEY):
            if name in names:
                raise ConfigError(f"{self._where()}: the query may not use :{name}; jetl binds it")
        missing = sorted(names - set(self.params) - set(INTERVAL_PARAMS))
        if missing:
            raise ConfigError(f"{self._where()}: no value for bound parameter(s) {', '.join(':' + m for m in missing)}")
        interval = [n for n in INTERVAL_PARAMS if n in names]
        clause = sa.text(query).bindparams(*(sa.bindparam(n, type_=sa.DateTime(timezone=True)) for n in interval))
        return clause, interval

    def _check_initial(self, initial: Any) -> Any:
        if initial is None:
            return None
        try:
            _dump(initial)
        except TypeError as exc:
            raise ConfigError(f"{self._where()}: Incremental(initial={initial!r}): {exc}") from exc
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
        """After an incremental run, the position reached, JSON-serialisable: `{"column", "value", "type",
        "key_column", "key", "key_type"}` (no key when the column is unique on its own)."""
        return None if self._cursor is None else dict(self._cursor)

    @property
    def cursor_field(self) -> str | None:
        """The column the cursor follows (what `jetl cursor set --from-destination` takes the max of)."""
        return self.incremental_column

    @property
    def cursor_tie_breaker(self) -> str | None:
        """The declared tie-breaker column (None: the table's primary key, known once connected, or none)."""
        return self.tie_breaker

    def cursor_at(self, value: Any, key: Any = None) -> dict[str, Any]:
        """The cursor an operator seeds (`jetl cursor set`): the next run reads rows strictly after `value` (and
        `key`, the tie-breaker's value, or the primary key's when none is declared; None: after every row at
        `value`). Timestamps are kept as ISO
        text, which the source casts or compares as it stores them (SQLite's text)."""
        if self.incremental_column is None:
            raise ConfigError(f"{self._where()}: not incremental, it keeps no cursor")
        return cursor_at(self.incremental_column, self.tie_breaker, value, key, self._where())

    def check(self, settings: JetlSettings) -> Check:
        """ok once constructed: the URL, table or query and options were checked then; it does not connect."""
        return Check("ok", "configured")

    def dispose(self) -> None:
        """Close the engine's pooled connections (at shutdown)."""
        self.engine.dispose()

    # -- a run ------------------------------------------------------------------------------------

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """Run the table scan or query and yield its rows in chunks of at most `chunk_size`."""
        start = self._start_position(ctx)
        if self.incremental_column is not None:
            self._cursor = dict(ctx.cursor) if ctx.cursor else self._cursor_of(start, None, None)
        async with contextlib.aclosing(self._chunks(ctx, start, None)) as chunks:  # stopped early: closed now
            async for chunk, stream in chunks:
                if stream.position is not start:  # moved past the start: the cursor is the last row read
                    self._cursor = self._cursor_of(stream.position, stream.key_column, stream.value_tag)
                    assert chunk.position is not None
                    chunk.position["high_water"] = self._cursor["value"]
                yield chunk

    def partitions(self, ctx: ExtractContext) -> list[Partition] | None:
        """With `partition_rows`, the run's key ranges (see the class docstring); None without it (one run, whole).
        After it, `next_cursor()` is the furthest position in the run's window, read here."""
        if self.partition_rows is None:
            return None
        start = self._start_position(ctx)
        try:
            with self.engine.connect() as connection:
                table, primary = self._reflect(connection)
                key = self._key_column(primary, ctx.pipeline) if self.incremental_column is not None else None
                specs, reached = _plan(
                    connection,
                    table,
                    primary,
                    self.partition_column,
                    self.partition_rows,
                    self.incremental_column,
                    key,
                    start,
                    self._where(),
                )
        except sa_exc.SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        if self.incremental_column is not None:
            if reached is None:  # nothing after the start: the cursor stays where it is
                self._cursor = dict(ctx.cursor) if ctx.cursor else self._cursor_of(start, None, None)
            else:
                tag = _text_tag(table.c[self.incremental_column], self.engine.dialect.name)
                self._cursor = self._cursor_of(reached, key, tag)
            for spec in specs:
                spec["until"] = self._cursor
        return [Partition(spec) for spec in specs]

    async def extract_partition(self, ctx: ExtractContext, partition: Partition) -> AsyncIterator[Chunk]:
        """Yield the rows of one key range planned by `partitions`, in key order, in chunks of `chunk_size`."""
        async with contextlib.aclosing(self._chunks(ctx, self._start_position(ctx), partition.spec)) as chunks:
            async for chunk, _ in chunks:
                yield chunk

    async def _chunks(
        self, ctx: ExtractContext, start: _Position | None, part: dict[str, Any] | None
    ) -> AsyncGenerator[tuple[Chunk, _Stream]]:
        """The rows after `start` (of one partition, with `part`), each chunk with the stream that read it."""
        binds = {**self.params}
        for name in self._interval_names:
            value = ctx.data_interval_start if name == "data_interval_start" else ctx.data_interval_end
            if value is None:
                raise ConfigError(f"{self._where()}: the query uses :{name}, but run {ctx.run_id} has no data interval")
            binds[name] = value
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jetl-db")
        stream: _Stream | None = None
        try:
            stream = await self._call(worker, self._open, start, binds, ctx.pipeline, part)
            while True:
                chunk = await self._call(worker, self._next_chunk, stream)
                if chunk is None:
                    break
                yield chunk, stream
        finally:
            if stream is not None:
                await asyncio.shield(self._call(worker, self._close, stream))
            worker.shutdown(wait=False)

    def _start_position(self, ctx: ExtractContext) -> _Position | None:
        """Where this run starts: the stored cursor's position, else `initial=`, else the beginning (None)."""
        if self.incremental_column is None:
            return None
        return _start_position(ctx.cursor, self.incremental_column, self._initial, self._where())

    def _cursor_of(self, position: _Position | None, key_column: str | None, tag: str | None) -> dict[str, Any]:
        return _cursor_of(self.incremental_column, position, key_column, tag, self._where())

    async def _call(self, worker: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn` on the run's worker thread with this task's context (log bindings); translate errors."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        try:
            return await loop.run_in_executor(worker, call)
        except sa_exc.SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sa_exc.SQLAlchemyError) -> JetlError:
        """The driver's error in jetl's terms, redacted (see `translate`)."""
        return _translate(exc, self._where(), self.url.password)

    # -- on the worker thread ---------------------------------------------------------------------

    def _open(
        self, start: _Position | None, binds: dict[str, Any], pipeline: str, part: dict[str, Any] | None = None
    ) -> _Stream:
        connection = self.engine.connect()
        try:
            statement, origin_columns, stream = self._statement(connection, start, binds, pipeline, part)
            result = connection.execution_options(stream_results=True, yield_per=self.chunk_size).execute(
                statement, binds
            )
            keys = list(map(str, result.keys()))  # exact str: reflected names are quoted_name, orjson wants str
            if self.incremental_column is not None:  # the trailing position columns are not the rows' own
                keys = keys[: -(1 if stream.key_column == self.incremental_column else 2)]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                result.close()
                raise ConfigError(f"{self._where()}: the query returns column {twice[0]!r} twice; alias one of them")
            origin_keys = None
            if origin_columns and all(c in keys for c in origin_columns):
                origin_keys = [keys.index(c) for c in origin_columns]
            stream.connection, stream.result, stream.keys, stream.origin_keys = connection, result, keys, origin_keys
            stream.partitions = result.partitions(self.chunk_size)
            return stream
        except BaseException:
            connection.close()
            raise

    def _statement(
        self,
        connection: Connection,
        start: _Position | None,
        binds: dict[str, Any],
        pipeline: str,
        part: dict[str, Any] | None = None,
    ) -> tuple[Any, list[str], _Stream]:
        """The SELECT to run (of one key range, with `part`), the primary-key columns that name a row in its origin
        (tables only), and the run's stream, not yet opened, with its start position and tie-breaker."""
        column = self.incremental_column
        stream = _Stream(start)
        if self._text is not None:
            if column is None:
                return self._text, [], stream
            key = self.tie_breaker
            assert key is not None  # checked at construction
            wanted: list[sa.ColumnClause[Any]] = [sa.column(column)] + ([sa.column(key)] if key != column else [])
            source = self._text.columns(*wanted).subquery(_SUBQUERY)
            stream.key_column = key
            statement = _after(
                sa.select(sa.literal_column("*")),
                source.c[column],
                source.c[key],
                unique=key == column,
                start=stream.position,
                binds=binds,
            )
            return statement.select_from(source), [], stream

        table, primary = self._reflect(connection)
        wanted_names = self.columns if self.columns is not None else list(table.c.keys())
        statement = sa.select(*(table.c[c] for c in wanted_names))
        dialect = connection.dialect.name
        order = list(primary)
        if column is not None:
            key = self._key_column(primary, pipeline)
            order.insert(0, key)
            if start is not None and not start.legacy and _compared(table.c[column], dialect) is not table.c[column]:
                start = stream.position = replace(start, value=str(start.stored))  # the source's own text
            stream.value_tag = _text_tag(table.c[column], dialect)
            stream.key_column = key
            value, tie = _compared(table.c[column], dialect), _compared(table.c[key], dialect)
            statement = _after(
                statement, value, tie, unique=key == column, start=stream.position, binds=binds, legacy=table.c[column]
            )
            if part is not None and part.get("until"):
                end = _start_position(part["until"], column, None, self._where())
                if end is not None:
                    if value is not table.c[column]:
                        end = replace(end, value=str(end.stored))
                    statement = statement.where(_through_clause(value, tie, unique=key == column, end=end, binds=binds))
        if part is not None:
            statement = _in_range(statement, table, dialect, part, order, binds)
        return statement, primary, stream

    def _reflect(self, connection: Connection) -> tuple[sa.Table, list[str]]:
        """The table as the database describes it, and its primary-key columns; every named column must exist."""
        assert self.table is not None
        table = sa.Table(self.table, sa.MetaData(), schema=self.schema, autoload_with=connection)
        known = list(table.c.keys())
        named = [
            *(self.columns or []),
            *(c for c in (self.incremental_column, self.tie_breaker, self.partition_column) if c),
        ]
        unknown = [c for c in named if c not in known]
        if unknown:
            raise ConfigError(f"{self._where()}: no column {unknown[0]!r}; the table has {', '.join(known)}")
        return table, [c.name for c in table.primary_key.columns]

    def _key_column(self, primary: list[str], pipeline: str) -> str:
        """The tie-breaker of the cursor order: the declared one, else the table's single-column primary key."""
        key = self.tie_breaker or (primary[0] if len(primary) == 1 else None)
        if key is None:
            raise ConfigError(
                f"pipeline {pipeline!r}: {self._where()}: the table has no single-column primary key to order "
                f"rows sharing a {self.incremental_column!r} value; declare Incremental(tie_breaker=...), a unique "
                f"column (or {self.incremental_column!r} itself if it is unique)"
            )
        return key

    def _next_chunk(self, stream: _Stream) -> Chunk | None:
        """Fetch the next partition and turn it into JSON-friendly records with origins; None at the end."""
        rows: list[Row[Any]] | None = next(stream.partitions, None)
        if rows is None:
            return None
        keys = stream.keys
        n = len(keys)
        records: list[Record] = [{k: _plain(v) for k, v in zip(keys, row[:n], strict=True)} for row in rows]
        first = stream.rows + 1
        stream.rows += len(rows)
        if self.table is None:
            origins = [f"query row {first + i}" for i in range(len(rows))]
        elif stream.origin_keys is not None:
            picks = stream.origin_keys
            origins = [f"table {self._name()} " + ",".join(f"{keys[i]}={row[i]}" for i in picks) for row in rows]
        else:
            origins = [f"table {self._name()} row {first + i}" for i in range(len(rows))]
        if self.incremental_column is not None:
            unique = stream.key_column == self.incremental_column
            for row in reversed(rows):  # rows come in cursor order: the last with a position is the furthest
                value, key = row[n], None if unique else row[n + 1]
                if value is not None and (unique or key is not None):
                    reached = _Position(value, key)
                    if reached.ahead_of(stream.position):
                        stream.position = reached
                    break
        return Chunk(records=records, origins=origins, position={"rows": stream.rows})

    def _close(self, stream: _Stream) -> None:
        try:
            stream.result.close()
            stream.connection.close()
        except sa_exc.SQLAlchemyError:  # the run's outcome is already decided; a failed close must not mask it
            stream.connection.invalidate()
