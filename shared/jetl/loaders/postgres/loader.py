"""`PostgresLoader`: COPY each batch into a table made from the pipeline's record model, exactly once per batch.

One transaction per batch (per part of a batch in parts): it records the batch's dedup token in `jetl_loads` (one
row per table and token, a primary key) and COPYs the rows, so either both land or neither does. A redelivered batch
finds its token already there and writes nothing; two loader replicas handed the same batch wait on the token's row
lock, and the second sees the first's commit and skips. Any number of replicas load in parallel: each batch is its
own transaction on its own connection.

Rows are stored as they come, each with its `_jetl_version`, `_jetl_deleted` and the `_jetl_batch_id` that wrote it
(lineage, as on ClickHouse), and read back as the disposition says in SQL (`current_sql`): per key the row of the
highest version (`DISTINCT ON`), the delete markers applied, the newest complete run under replace, spans under
history: the same answers as `jetl.loaders.versions.current`, whatever order batches arrived in. A replayed batch
removes its parent's rows by lineage (`remove_batch`); a replay being diffed writes to `<table>__shadow_<run>`.

Tables are created from the model on first load; after that they change only through migrations
(`migrations/postgres/`, `jetl migrate --postgres DSN`): a table missing a model column stops the load with a
TerminalError naming the column, instead of altering it behind the operator's back.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from jetl.errors import ConfigError, DestinationUnavailable, TerminalError
from jetl.loaders.clickhouse.lineage import shadow_table
from jetl.loaders.postgres.types import Convert, columns_for, quote
from jetl.loaders.versions import LINEAGE, newest_source, version_array
from jetl.protocols import (
    DELETED,
    IS_CURRENT,
    VALID_FROM,
    VALID_TO,
    VERSION,
    Check,
    Diff,
    Disposition,
    LoadContext,
    Loader,
    Record,
    RunView,
    WriteSpec,
)
from jetl.redact import redact_url

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

LOADS = "jetl_loads"
"""The table recording every batch (part) loaded: (table, token) is its primary key."""
JETL_COLUMNS = [(VERSION, "numeric(20, 0) NOT NULL"), (DELETED, "boolean NOT NULL DEFAULT false"), (LINEAGE, "text")]
"""What every table holds besides the model's columns (versions reach 2**64: numeric, not bigint)."""


class PostgresLoader:
    """COPY batches into `schema.table` on the PostgreSQL at `dsn` (`postgresql://user@host:5432/db`)."""

    def __init__(self, table: str, *, dsn: str, schema: str = "public") -> None:
        quote(table)
        quote(schema)
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError("PostgresLoader: dsn must be a postgresql:// URL")
        self.table = table
        self.schema = schema
        self.dsn = dsn
        self.spec = WriteSpec()
        self._model: type[BaseModel] | None = None
        self._columns: list[tuple[str, str, Convert | None, bool]] = []
        self._ready: set[str] = set()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._evolved: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()

    def __repr__(self) -> str:
        return f"PostgresLoader({self.table!r})"

    def __copy__(self) -> PostgresLoader:
        twin = PostgresLoader.__new__(PostgresLoader)
        twin.__dict__.update(self.__dict__)
        twin._ready = set()
        twin._local = threading.local()
        twin._lock = threading.Lock()
        return twin

    # Configuration and checks

    @property
    def qualified(self) -> str:
        """ "schema"."table"."""
        return f"{quote(self.schema)}.{quote(self.table)}"

    @property
    def loads(self) -> str:
        """ "schema"."jetl_loads"."""
        return f"{quote(self.schema)}.{quote(LOADS)}"

    @property
    def mode(self) -> Disposition:
        """The disposition ("merge" when it keeps one row per key)."""
        return self.spec.disposition

    def describe(self) -> str:
        """Where rows go, the DSN's password masked."""
        return f"postgres:{redact_url(self.dsn)}#{self.schema}.{self.table}"

    def check(self, settings: JetlSettings) -> Check:
        """The table and server (it does not connect: `reach` does)."""
        return Check("ok", f"table {self.schema}.{self.table} on {redact_url(self.dsn)}")

    def reach(self) -> None:
        """SELECT 1 on the server (the loader service's health check)."""
        with self._conn().cursor() as cur:
            cur.execute("SELECT 1")

    def check_schema(self, model: type[BaseModel]) -> None:
        """Fail at start-up when a field has no PostgreSQL type or a key column is missing or optional."""
        try:
            columns = columns_for(model)
        except ConfigError as exc:
            raise ConfigError(f"PostgresLoader({self.table}): {exc}") from exc
        nullable = {name: null for name, _, _, null in columns}
        for col in self.spec.key:
            if col not in nullable:
                raise ConfigError(
                    f"PostgresLoader({self.table}): key column {col!r} is not a field of {model.__name__}"
                )
            if nullable[col]:
                raise ConfigError(f"PostgresLoader({self.table}): key column {col!r} may not be optional")
        deletes = self.spec.deletes
        if deletes is not None and deletes.field not in nullable:
            raise ConfigError(f"PostgresLoader({self.table}): delete marker {deletes.field!r} is not a field")
        self._model, self._columns = model, columns

    def merge_on(self, key: list[str]) -> None:
        """Keep one row per `key`: `write_as(WriteSpec("merge", key))`."""
        self.write_as(WriteSpec("merge", tuple(key)))

    def write_as(self, spec: WriteSpec) -> None:
        """Write and read back as `spec` says (rows are stored the same way in every disposition)."""
        for col in spec.key:
            quote(col)
        self.spec = spec

    # Connections and tables

    def _conn(self) -> Any:
        """This thread's connection (autocommit: every write opens its own transaction)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg

            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as exc:
                raise DestinationUnavailable(f"cannot connect to {redact_url(self.dsn)}: {_first_line(exc)}") from None
            self._local.conn = conn
        return conn

    def ddl(self, model: type[BaseModel]) -> list[str]:
        """CREATE SCHEMA, TABLE and the loads table for the model."""
        cols = [f"{quote(n)} {t}{'' if null else ' NOT NULL'}" for n, t, _, null in columns_for(model)]
        cols += [f"{quote(n)} {t}" for n, t in JETL_COLUMNS]
        return [
            f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}",
            f"CREATE TABLE IF NOT EXISTS {self.qualified} ({', '.join(cols)})",
            f"CREATE TABLE IF NOT EXISTS {self.loads} (tbl text NOT NULL, token text NOT NULL, batch_id text NOT NULL,"
            " rows bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tbl, token))",
        ]

    def ensure_table(self, model: type[BaseModel]) -> None:
        """Create the table when missing (under an advisory lock: replicas start together); check an existing one
        has every column the model needs (a migration adds them, jetl does not)."""
        if self.qualified in self._ready:
            return
        if self._model is not model:
            self.check_schema(model)
        conn = self._conn()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"jetl:{self.schema}",))
                for sql in self.ddl(model):
                    cur.execute(sql)
                cur.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (self.schema, self.table),
                )
                present = {r[0] for r in cur.fetchall()}
        except Exception as exc:
            raise _wrap(exc, f"creating {self.qualified}") from exc
        missing = [n for n, *_ in self._columns if n not in present] + [n for n, _ in JETL_COLUMNS if n not in present]
        if missing:
            raise TerminalError(
                f"PostgresLoader: {self.qualified} has no column(s) {', '.join(missing)} of {model.__name__}; add "
                "them with a migration in migrations/postgres/ (jetl migrate)"
            )
        self._ready.add(self.qualified)

    def evolve(self, schema: type[BaseModel], evolution: dict[str, Any]) -> list[str]:
        """Bring the table up to `schema` evolved by `evolution` (`jetl.evolution`): new columns added, columns
        widened or their NOT NULL dropped, planned, applied and recorded in `jetl_migrations` in one transaction
        under the advisory lock the table was created under (`PostgresMigrator.evolve`): once across replicas."""
        from jetl.evolution import evolved_model, label, plan
        from jetl.migrations import Migrator, PostgresMigrator

        self.ensure_table(schema)
        done = (self.qualified, tuple(sorted(evolution.items())))
        if done in self._evolved:
            return []
        wanted = {n: t for n, t, _, _ in columns_of(evolved_model(schema, evolution)) if n in evolution}

        def planned(m: Migrator) -> tuple[str, list[str]]:
            rows = m.read(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = %s",
                (self.schema, self.table),
            )
            existing = {str(n): (str(t), nullable == "YES") for n, t, nullable in rows}
            changes = plan(evolution, existing, wanted, _lattice, _PG_TYPES)
            statements = []
            for name, what, type_ in changes:
                col = f"ALTER TABLE {self.qualified} ALTER COLUMN {quote(name)}"
                if what == "add":
                    statements.append(f"ALTER TABLE {self.qualified} ADD COLUMN IF NOT EXISTS {quote(name)} {type_}")
                elif what == "widen":
                    statements += [f"{col} TYPE {type_} USING {quote(name)}::{type_}", f"{col} DROP NOT NULL"]
                else:
                    statements.append(f"{col} DROP NOT NULL")
            return label(self.table, changes), statements

        migrator = PostgresMigrator(self.dsn, self.schema)
        try:
            applied = migrator.evolve(planned)
        finally:
            migrator.close()
        self._evolved.add(done)
        return applied.statements() if applied else []

    # Writing

    def _ready_model(self, ctx: LoadContext) -> type[BaseModel]:
        """The model a batch is written with (its own, else the bound one), its table created if need be."""
        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"PostgresLoader({self.table}): no schema bound")
        self.ensure_table(model)
        return model

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """In one transaction: claim the batch's token in `jetl_loads` (skip if it is taken: a redelivery), then
        COPY the rows with their version, delete flag and lineage."""
        if not records:
            return 0
        model = self._ready_model(ctx)
        cols = columns_of(model)
        names = [n for n, *_ in cols]
        convs = [c for _, _, c, _ in cols]
        defaults = [
            None if f.is_required() else f.get_default(call_default_factory=True) for f in model.model_fields.values()
        ]
        deletes = self.spec.deletes
        base, batch = ctx.base_version, ctx.batch_id

        def write(cp: Any) -> None:
            for i, r in enumerate(records):
                row = [
                    r.get(n, d) if c is None else c(r.get(n, d)) for n, c, d in zip(names, convs, defaults, strict=True)
                ]
                row += [base + i, bool(deletes(r)) if deletes else False, batch]
                cp.write_row(row)

        return self._copy(ctx, len(records), write, names)

    def _copy(self, ctx: LoadContext, n: int, write: Callable[[Any], None], names: list[str], options: str = "") -> int:
        """In one transaction: claim the batch's token in `jetl_loads` (nothing more when it is taken), then COPY
        what `write` writes into the table's columns `names` (and jetl's own)."""
        columns = ", ".join(quote(c) for c in [*names, VERSION, DELETED, LINEAGE])
        conn = self._conn()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    f"INSERT INTO {self.loads} (tbl, token, batch_id, rows) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (self.table, ctx.dedup_token, ctx.batch_id, n),
                )
                if cur.rowcount == 0:
                    return n  # loaded before: a redelivery, or a replica got it first
                with cur.copy(f"COPY {self.qualified} ({columns}) FROM STDIN {options}") as cp:
                    write(cp)
        except (TerminalError, ConfigError):
            raise
        except Exception as exc:
            raise _wrap(exc, f"loading batch {ctx.batch_id} into {self.qualified}") from exc
        return n

    def load_arrow(self, table: Any, ctx: LoadContext) -> int:
        """`load` for a batch given as an Arrow table (checked against the model): written as CSV by Arrow and
        COPYed in CSV format, in the same transaction as its token, with no Python object per value (bench/postgres.py:
        1M records of the reference job through one loader replica in 7.3 s, a psycopg `write_row` script 7.9 s)."""
        n = int(table.num_rows)
        if n == 0:
            return 0
        model = self._ready_model(ctx)
        cols = columns_of(model)
        if any(conv is not None for _, _, conv, _ in cols):
            return self.load(table.to_pylist(), ctx)  # JSON or enum columns: their values need converting
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        names = [name for name, *_ in cols]
        deletes = self.spec.deletes
        if deletes is None:
            deleted = pa.nulls(n, pa.bool_()).fill_null(False)
        else:
            deleted = pc.fill_null(pc.equal(table.column(deletes.field), pa.scalar(deletes.value)), False)
        out = pa.Table.from_arrays(
            [
                *(table.column(name) for name in names),
                version_array(ctx.base_version, n),
                deleted,
                pa.array([ctx.batch_id] * n, pa.string()),
            ],
            names=[*names, VERSION, DELETED, LINEAGE],
        )
        sink = pa.BufferOutputStream()
        pacsv.write_csv(out, sink, pacsv.WriteOptions(include_header=False))
        data = sink.getvalue()
        return self._copy(ctx, n, lambda cp: cp.write(data), names, "(FORMAT csv)")

    # Reading: the rows as the destination means them (jetl.protocols.VersionedLoader)

    def _fetch(self, sql: str, params: Any = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        import psycopg

        try:
            with self._conn().cursor() as cur:
                cur.execute(sql, params)
                names = [d.name for d in cur.description or []]
                return names, cur.fetchall()
        except psycopg.errors.UndefinedTable:
            return [], []
        except Exception as exc:
            raise _wrap(exc, f"reading {self.qualified}") from exc

    def current_sql(self, runs: RunView | None = None, table: str | None = None) -> str:
        """SELECT of the current rows under the disposition (the SQL twin of `jetl.loaders.versions.current`)."""
        if self._model is None:
            raise ConfigError(f"PostgresLoader({self.table}): no schema bound")
        runs = runs or RunView()
        table = table or self.qualified
        run = f"split_part({quote(LINEAGE)}, '/', 1)"
        where = [f"{run} <> ALL({_array(sorted(runs.superseded))})"] if runs.superseded else []
        disposition = self.spec.disposition
        if disposition == "replace":
            _, tops = self._fetch(f"SELECT {run}, max({quote(VERSION)}) FROM {table} GROUP BY 1")
            where.append(f"{run} = ANY({_array(newest_source([(str(r), int(v)) for r, v in tops], runs))})")
        v = quote(VERSION)
        base = (
            f"SELECT DISTINCT ON ({v}) * FROM {table}"
            f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {v}, {quote(LINEAGE)}"
        )
        if disposition in ("append", "replace"):
            return base
        keys = ", ".join(quote(k) for k in self.spec.key)
        if disposition == "merge":
            latest = f"SELECT DISTINCT ON ({keys}) * FROM ({base}) AS b ORDER BY {keys}, {v} DESC"
            return f"SELECT * FROM ({latest}) AS m WHERE NOT {quote(DELETED)}"
        spans = (
            f"SELECT *, {v} AS {quote(VALID_FROM)}, lead({v}) OVER (PARTITION BY {keys} ORDER BY {v})"
            f" AS {quote(VALID_TO)} FROM ({base}) AS b"
        )
        return (
            f"SELECT *, {quote(VALID_TO)} IS NULL AS {quote(IS_CURRENT)} FROM ({spans}) AS h WHERE NOT {quote(DELETED)}"
        )

    def current_rows(self, pipeline: str, runs: RunView | None = None, limit: int | None = None) -> list[Record]:
        """The current rows as dicts, with `_jetl_version` (as int); with `limit`, the newest `limit`."""
        sql = self.current_sql(runs)
        sql = f"SELECT * FROM ({sql}) AS c ORDER BY {quote(VERSION)}"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) AS n ORDER BY {quote(VERSION)}"
        names, rows = self._fetch(sql)
        out = []
        for row in rows:
            r = dict(zip(names, row, strict=True))
            r.pop(DELETED, None)
            r.pop(LINEAGE, None)
            for col in (VERSION, VALID_FROM, VALID_TO):
                if r.get(col) is not None:
                    r[col] = int(r[col])
            out.append(r)
        return out

    def count_current(self, pipeline: str, runs: RunView | None = None) -> int:
        """How many current rows there are, counted by the server."""
        _, rows = self._fetch(f"SELECT count(*) FROM ({self.current_sql(runs)}) AS c")
        return int(rows[0][0]) if rows else 0

    def count(self) -> int:
        """Rows stored in the table (every version)."""
        _, rows = self._fetch(f"SELECT count(*) FROM {self.qualified}")
        return int(rows[0][0]) if rows else 0

    def distinct_keys(self, pipeline: str) -> int:
        """Distinct keys among the current rows (every current row without a key)."""
        return self.count_current(pipeline)

    def max_position(self, pipeline: str, column: str, tie_breaker: str | None) -> tuple[Any, Any] | None:
        """The last row in (`column`, `tie_breaker`) order: seeds a cursor."""
        cols = [quote(column), *([quote(tie_breaker)] if tie_breaker else [])]
        _, rows = self._fetch(
            f"SELECT {', '.join(cols)} FROM {self.qualified} WHERE {cols[0]} IS NOT NULL"
            f" ORDER BY {' DESC, '.join(cols)} DESC LIMIT 1"
        )
        return None if not rows else (rows[0][0], rows[0][1] if tie_breaker else None)

    def query(
        self, sql: str, *, runs: RunView | None = None, current: bool = True, max_rows: int = 1000, seconds: float = 30
    ) -> tuple[list[str], list[list[Any]], bool]:
        """(columns, rows, truncated) of one SELECT in a read-only transaction with a statement timeout; with
        `current`, the table's name in it reads its current rows (a CTE of that name)."""
        text = sql.strip().rstrip(";").strip()
        if ";" in text:
            raise TerminalError("one statement at a time: the query holds a ';'")
        if text[:6].upper() != "SELECT" and text[:4].upper() != "WITH":
            raise TerminalError("only SELECT (or WITH ... SELECT) queries are read")
        if current:
            cte = f"{quote(self.table)} AS ({self.current_sql(runs)})"
            text = f"WITH {cte}, {text[4:].lstrip()}" if text[:4].upper() == "WITH" else f"WITH {cte} {text}"
        conn = self._conn()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}")
                cur.execute(text)
                names = [d.name for d in cur.description or []]
                rows = [list(r) for r in cur.fetchmany(max_rows + 1)]
        except Exception as exc:
            raise _wrap(exc, f"querying {self.qualified}") from exc
        return names, rows[:max_rows], len(rows) > max_rows

    # Lineage: replay, diff and the ledger (jetl.protocols.LineageLoader)

    def rows_by_run(self, pipeline: str) -> dict[str, int]:
        """Rows stored per run id that wrote them."""
        _, rows = self._fetch(f"SELECT split_part({quote(LINEAGE)}, '/', 1), count(*) FROM {self.qualified} GROUP BY 1")
        return {str(run or ""): int(n) for run, n in rows}

    def remove_batch(self, pipeline: str, batch_id: str) -> None:
        """Delete the rows one batch wrote (every part of it); its tokens stay in `jetl_loads`, so a late
        redelivery of the superseded batch is not loaded again."""
        import psycopg

        try:
            with self._conn().cursor() as cur:
                cur.execute(f"DELETE FROM {self.qualified} WHERE {quote(LINEAGE)} = %s", (batch_id,))
        except psycopg.errors.UndefinedTable:
            return
        except Exception as exc:
            raise _wrap(exc, f"removing batch {batch_id} from {self.qualified}") from exc

    def shadow(self, run_id: str) -> Loader:
        """The same loader writing to this run's shadow table `<table>__shadow_<run>`."""
        twin = copy.copy(self)
        twin.table = shadow_table(self.table, run_id)
        quote(twin.table)
        return twin

    def drop_shadow(self, pipeline: str, run_id: str) -> None:
        """Drop a run's shadow table and forget its loads."""
        twin = self.shadow(run_id)
        assert isinstance(twin, PostgresLoader)
        try:
            with self._conn().transaction(), self._conn().cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {twin.qualified}")
                cur.execute(f"DELETE FROM {self.loads} WHERE tbl = %s", (twin.table,))
        except Exception as exc:
            if "does not exist" in str(exc):
                return
            raise _wrap(exc, f"dropping {twin.qualified}") from exc

    def has_shadow(self, pipeline: str, run_id: str) -> bool:
        """Whether the run's shadow table exists."""
        twin = self.shadow(run_id)
        assert isinstance(twin, PostgresLoader)
        try:
            with self._conn().cursor() as cur:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (twin.qualified,))
                found = cur.fetchone()
        except Exception as exc:
            raise _wrap(exc, f"looking for {twin.qualified}") from exc
        return bool(found and found[0])

    def diff(self, pipeline: str, parent_run_id: str, shadow_run_id: str, sample: int = 10) -> Diff:
        """The shadow of `shadow_run_id` against the rows `parent_run_id` has in the table, matched by the
        primary key (whole rows, as a multiset, without one)."""
        if self._model is None:
            raise ConfigError(f"PostgresLoader({self.table}): no schema bound")
        twin = self.shadow(shadow_run_id)
        assert isinstance(twin, PostgresLoader)
        fields = list(self._model.model_fields)
        key = list(self.spec.key)
        parent = f"SELECT * FROM {self.qualified} WHERE {quote(LINEAGE)} LIKE %s"
        like = parent_run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        row = ", ".join(quote(c) for c in fields)
        out = Diff(key=key)
        if not key:
            sql = (
                f"WITH p AS (SELECT md5(row({row})::text) AS h, count(*) AS n FROM ({parent}) AS x GROUP BY 1),"
                f" s AS (SELECT md5(row({row})::text) AS h, count(*) AS n FROM {twin.qualified} GROUP BY 1)"
                " SELECT coalesce(sum(greatest(s.n, p.n) - coalesce(p.n, 0)), 0),"
                " coalesce(sum(greatest(s.n, p.n) - coalesce(s.n, 0)), 0),"
                " coalesce(sum(least(coalesce(s.n, 0), coalesce(p.n, 0))), 0) FROM p FULL JOIN s USING (h)"
            )
            _, rows = self._fetch(sql, (like,))
            if rows:
                out.added, out.removed, out.unchanged = (int(x or 0) for x in rows[0])
            return out
        keys = ", ".join(quote(k) for k in key)
        values = [c for c in fields if c not in key]
        side = ", ".join(f"{quote(c)} AS {quote('_x_' + c)}" for c in values)
        shown = quote(key[0]) if len(key) == 1 else f"json_build_array({keys})"
        both = (
            f"SELECT {keys}, p._has AS p_has, s._has AS s_has, p._h AS p_h, s._h AS s_h"
            + "".join(
                f", p.{quote('_x_' + c)} AS {quote('_p_' + c)}, s.{quote('_x_' + c)} AS {quote('_s_' + c)}"
                for c in values
            )
            + f" FROM (SELECT {keys}, md5(row({row})::text) AS _h, 1 AS _has{', ' + side if side else ''}"
            f" FROM ({parent}) AS x) AS p"
            f" FULL JOIN (SELECT {keys}, md5(row({row})::text) AS _h, 1 AS _has{', ' + side if side else ''}"
            f" FROM {twin.qualified}) AS s USING ({keys})"
        )
        kind = (
            "CASE WHEN p_has IS NULL THEN 'added' WHEN s_has IS NULL THEN 'removed'"
            " WHEN p_h <> s_h THEN 'changed' ELSE 'unchanged' END"
        )
        _, rows = self._fetch(
            f"SELECT kind, count(*), (array_agg({shown}))[1:{int(sample)}] FROM"
            f" (SELECT *, {kind} AS kind FROM ({both}) AS j) AS k GROUP BY kind",
            (like,),
        )
        for k, n, sampled in rows:
            setattr(out, str(k), int(n))
            if k != "unchanged" and sampled:
                out.samples[str(k)] = list(sampled)
        if out.changed and values:
            counts = ", ".join(
                f"count(*) FILTER (WHERE {quote('_p_' + c)} IS DISTINCT FROM {quote('_s_' + c)})" for c in values
            )
            _, changed = self._fetch(f"SELECT {counts} FROM ({both}) AS j WHERE p_has = 1 AND s_has = 1", (like,))
            out.columns = {c: int(n) for c, n in zip(values, changed[0], strict=True) if n}
        return out


def _array(values: list[str]) -> str:
    """A text[] literal of `values`."""
    inner = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"ARRAY[{inner}]::text[]"


_PG_TYPES = {"bigint": "bigint", "float": "double precision", "decimal": "numeric", "text": "text", "bool": "boolean"}
"""The column type of each lattice type (`jetl.evolution`)."""


def _lattice(type_: str) -> str | None:
    """A PostgreSQL column type's place on the evolution lattice (None: off it)."""
    if type_ in ("smallint", "integer", "bigint"):
        return "bigint"
    if type_ in ("real", "double precision"):
        return "float"
    if type_.startswith("numeric"):
        return "decimal"
    return {"text": "text", "character varying": "text", "boolean": "bool"}.get(type_)


_COLUMNS: dict[Any, list[tuple[str, str, Convert | None, bool]]] = {}


def columns_of(model: Any) -> list[tuple[str, str, Convert | None, bool]]:
    """`columns_for`, once per model (a batch's model: the schema, or the schema evolved)."""
    found = _COLUMNS.get(model)
    if found is None:
        found = _COLUMNS[model] = columns_for(model)
    return found


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _wrap(exc: BaseException, doing: str) -> Exception:
    """A driver error in jetl's terms: the server gone or busy is transient, a refused statement terminal."""
    import psycopg

    if isinstance(
        exc, psycopg.OperationalError | psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure
    ):
        return DestinationUnavailable(f"{doing}: {_first_line(exc)}")
    if isinstance(exc, psycopg.Error):
        return TerminalError(f"{doing}: {_first_line(exc)}")
    return DestinationUnavailable(f"{doing}: {_first_line(exc)}")
