"""`ClickHouseLoader`: writes batches into a table made from the pipeline's record model, exactly once per batch.

Every insert carries `insert_deduplication_token = batch_id` (the part's id for a batch in parts,
`LoadContext.dedup_token`) on a table created with a deduplication window, so a redelivered or replayed batch is not
loaded twice. Every row carries its version (its place in the source's log) and each disposition has its engine
(`jetl.loaders.clickhouse.versions`): under merge a ReplacingMergeTree keyed on the primary key keeps the row of the
highest version, whatever order batches arrive in, and `current_rows` / `query` read rows as the destination means
them (`FINAL`). It is a `LineageLoader` too: rows per run, removing a batch, shadow tables and diffs, all by the
lineage column (`jetl.loaders.clickhouse.lineage`). A batch a replay removed is written down and never inserted
again (`jetl_superseded`): a merge would otherwise fold a late parent's copy over the replay's, and the parent
batch's next removal would take the record with it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

import jetl.loaders.clickhouse.lineage as lineage
import jetl.loaders.clickhouse.versions as versions
from jetl.errors import ConfigError, TerminalError
from jetl.loaders.clickhouse.client import _missing_table, _wrap, get_client
from jetl.loaders.clickhouse.lineage import LINEAGE_COLUMN
from jetl.loaders.clickhouse.sql import PARTITION, create_table, quote
from jetl.loaders.clickhouse.types import Convert, _utc_if_naive, arrow_types_for, columns_for, converters_for
from jetl.loaders.versions import newest_source, version_array
from jetl.protocols import (
    DELETED,
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
from jetl.settings import ClickHouseSettings

if TYPE_CHECKING:
    from jetl.settings import JetlSettings


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
        if partition_by is not None and not PARTITION.match(partition_by):
            raise ConfigError(f"ClickHouseLoader: partition_by must be a column or f(column), got {partition_by!r}")
        self.table = table
        self.dsn = dsn
        self.database = database
        self.order_by = list(order_by or [])
        self.mode: Disposition = mode
        self.spec = WriteSpec(mode, tuple(self.order_by))
        self.version_column = version_column
        self.partition_by = partition_by
        self.settings = ClickHouseSettings()
        self._ready: set[str] = set()
        self._folds = True
        """The table's engine folds rows (FINAL): a table made before versions, as a plain MergeTree, does not."""
        self._database: str | None = None
        self._model: type[BaseModel] | None = None
        self._converters: dict[type[BaseModel], list[tuple[str, Convert | None]]] = {}
        self._arrow_types: dict[type[BaseModel], list[Any] | None] = {}
        self._evolved: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()

    def __repr__(self) -> str:
        return f"ClickHouseLoader({self.table!r})"

    def open(self, dsn: str, settings: ClickHouseSettings | None = None) -> None:
        """Bind to the configured destination (the loader service calls this with its settings)."""
        if self.dsn is None:
            self.dsn = dsn
        if settings is not None:
            self.settings = settings
            self.database = self.database or settings.database

    def merge_on(self, key: list[str]) -> None:
        """Keep one row per `key` (a pipeline's primary key): `write_as(WriteSpec("merge", key))`."""
        self.write_as(WriteSpec("merge", tuple(key)))

    def write_as(self, spec: WriteSpec) -> None:
        """Write and read back as `spec` says: merge and history key the table on the primary key (a
        ReplacingMergeTree where the highest version wins, or that keeps every version)."""
        for col in spec.key:
            quote(col)
        if spec.disposition in ("merge", "history"):
            if self.order_by and self.order_by != list(spec.key):
                raise ConfigError(
                    f"ClickHouseLoader({self.table}): order_by {self.order_by} differs from the pipeline's primary key "
                    f"{list(spec.key)}; a merge table keeps one row per order_by, so leave order_by out or make them "
                    "equal"
                )
            self.order_by = list(spec.key)
        if self.version_column and spec.disposition != "merge":
            raise ConfigError("ClickHouseLoader: version_column only applies to the merge disposition")
        self.mode, self.spec = spec.disposition, spec

    def distinct_keys(self, pipeline: str) -> int:
        """Distinct keys among the current rows (every current row without a key; 0 when there is no table)."""
        if not self.spec.key:
            return self.current_count()
        keys = ", ".join(quote(c) for c in self.spec.key)
        row = self._row(f"SELECT uniqExact({keys}) FROM ({self.current_sql()})", "counting keys of")
        return 0 if row is None else int(row[0])

    def max_position(self, pipeline: str, column: str, tie_breaker: str | None) -> tuple[Any, Any] | None:
        """The last row in (`column`, `tie_breaker`) order (None when the table is empty or missing): seeds a
        cursor."""
        cols = [quote(column), *([quote(tie_breaker)] if tie_breaker else [])]
        sql = (
            f"SELECT {', '.join(cols)} FROM {self.qualified} WHERE {cols[0]} IS NOT NULL"
            f" ORDER BY {' DESC, '.join(cols)} DESC LIMIT 1"
        )
        row = self._row(sql, f"reading the last {column} of")
        # a DateTime64 comes back naive (chdb): it is UTC, and a cursor sent to an API must say so
        return None if row is None else (_utc_if_naive(row[0]), row[1] if tie_breaker else None)

    def _row(self, sql: str, doing: str) -> Any:
        try:
            rows = self.client().query(sql).result_rows
        except Exception as exc:
            if _missing_table(exc):
                return None
            raise _wrap(exc, f"{doing} {self.qualified}") from exc
        return rows[0] if rows else None

    def check(self, settings: JetlSettings) -> Check:
        """The table and where it lives (its own DSN, else the configured one); warn when a chdb folder cannot be
        created. It does not connect."""
        dsn = self.dsn or settings.clickhouse_dsn
        if dsn.startswith("chdb://"):
            folder = Path(dsn.removeprefix("chdb://"))
            if not (folder.exists() or folder.parent.exists() or folder.parent.parent.exists()):
                return Check("warn", f"chdb folder {folder} cannot be created (no parent folder)")
        return Check("ok", f"table {self.table} on {redact_url(dsn)}")

    def exclusive(self, settings: JetlSettings) -> str | None:
        """On chdb (the embedded default) one process opens the folder: the reason; on a server, None."""
        dsn = self.dsn or settings.clickhouse_dsn
        if dsn.startswith("chdb://"):
            return f"{self!r} writes the embedded ClickHouse (chdb), which opens in one process only"
        return None

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

    def evolve(self, schema: type[BaseModel], evolution: dict[str, Any]) -> list[str]:
        """Bring the table up to `schema` evolved by `evolution` (`jetl.evolution`): new columns added, columns
        widened or made Nullable, each change a migration in `jetl_migrations` (`Migrator.evolve`)."""
        from jetl.evolution import evolved_model, label, plan
        from jetl.migrations import Migrator

        self.ensure_table(schema)
        done = (self.qualified, tuple(sorted(evolution.items())))
        if done in self._evolved:
            return []
        wanted = {n: _bare_type(t) for n, t in columns_for(evolved_model(schema, evolution)) if n in evolution}
        database = f"'{self.database}'" if self.database else "currentDatabase()"

        def planned(m: Migrator) -> tuple[str, list[str]]:
            rows = m.read(
                f"SELECT name, type FROM system.columns WHERE database = {database} AND table = '{self.table}'"
            )
            existing = {str(n): (_bare_type(str(t)), str(t).startswith("Nullable(")) for n, t in rows}
            changes = plan(evolution, existing, wanted, _lattice, _CH_TYPES)
            return label(self.table, changes), [
                f"ALTER TABLE {self.qualified} {'ADD COLUMN IF NOT EXISTS' if what == 'add' else 'MODIFY COLUMN'} "
                f"{quote(name)} Nullable({type_})"
                for name, what, type_ in changes
            ]

        try:
            applied = Migrator(self.client(), self.database or "default").evolve(planned)
        except (TerminalError, ConfigError):
            raise
        except Exception as exc:
            raise _wrap(exc, f"evolving {self.qualified}") from exc
        self._evolved.add(done)
        return applied.statements() if applied else []

    @property
    def qualified(self) -> str:
        """`db`.`table`."""
        return f"{quote(self.database)}.{quote(self.table)}" if self.database else quote(self.table)

    @property
    def _superseded(self) -> str:
        """`db`.`jetl_superseded`: the batches removed from this database's tables (`lineage.SUPERSEDED`)."""
        table = quote(lineage.SUPERSEDED)
        return f"{quote(self.database)}.{table}" if self.database else table

    def _ensure_superseded(self, c: Any) -> None:
        """Create the database's table of superseded batches if missing (once per loader)."""
        if self._superseded in self._ready:
            return
        if self.database:
            c.command(f"CREATE DATABASE IF NOT EXISTS {quote(self.database)}")
        c.command(lineage.create_superseded(self._superseded))
        self._ready.add(self._superseded)

    def superseded(self, batch_id: str) -> bool:
        """Whether a replay removed batch `batch_id` from this table (it is not inserted again)."""
        try:
            rows = self.client().query(lineage.is_superseded(self._superseded, self.table, batch_id)).result_rows
        except Exception as exc:
            raise _wrap(exc, f"looking up batch {batch_id} of {self.qualified}") from exc
        return bool(rows)

    def describe(self) -> str:
        """Where rows go, the DSN's password masked (this lands in events, logs and `--json` output)."""
        return f"clickhouse:{redact_url(self.dsn)}#{self.table}"

    def reach(self) -> None:
        """`SELECT 1` on the destination (nothing before the loader service binds a DSN: `ReachableLoader`)."""
        if self.dsn:
            self.client().command("SELECT 1")

    def client(self) -> Any:
        """The connected client."""
        if not self.dsn:
            raise ConfigError(f"ClickHouseLoader({self.table}): no DSN; the loader service binds one")
        return get_client(self.dsn, self.settings)

    def ddl(self, model: type[BaseModel], table: str | None = None) -> str:
        """CREATE TABLE for the model."""
        return create_table(
            self.qualified if table is None else quote(table),
            [*columns_for(model), LINEAGE_COLUMN, *versions.COLUMNS],
            order_by=versions.order_by(self.mode, self.order_by),
            engine=versions.engine(self.mode, self.version_column),
            partition_by=self.partition_by,
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
            self._ensure_superseded(c)
            self._check_engine(c)
            # a table created before the lineage or version columns existed gets them (old rows read as "" and 0)
            c.command(lineage.add_column(key))
            for alter in versions.add_columns(key):
                c.command(alter)
        except ConfigError:
            raise
        except Exception as exc:
            raise _wrap(exc, f"creating {key}") from exc
        self._ready.add(key)

    def _check_engine(self, c: Any) -> bool:
        """Whether the table exists (and whether its engine folds rows). A merge loader over a table made in append
        mode would append, and over one made before versions (no version in its engine) the last insert would win:
        refuse both rather than load wrong rows."""
        database = f"'{self.database}'" if self.database else "currentDatabase()"
        rows = c.query(
            f"SELECT engine, engine_full FROM system.tables WHERE database = {database} AND name = '{self.table}'"
        )
        engine, full = (str(x) for x in rows.result_rows[0]) if rows.result_rows else ("", "")
        self._folds = not engine or "Replacing" in engine
        if self.mode != "merge" or not engine:
            return bool(engine)
        wanted = versions.engine("merge", self.version_column)
        if "Replacing" not in engine or not _bare(full).startswith(_bare(wanted)):
            keys = ", ".join(self.order_by)
            raise ConfigError(
                f"ClickHouseLoader({self.table}): the table exists as {engine}, made before the pipeline declared a "
                "primary key or before rows carried versions; it would keep every copy of a row, or let the last "
                f"insert win over the newest version. Rebuild it as {wanted} ORDER BY ({keys}) (CREATE TABLE ... "
                f"AS ... ENGINE = {wanted} ORDER BY ({keys}), INSERT ... SELECT, EXCHANGE TABLES)"
            )
        return True

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
        arrays.append(lineage.lineage_array(batch_id, len(records)))
        return pa.Table.from_arrays(arrays, names=[*names, lineage.LINEAGE])

    def _stamp(self, table: Any, ctx: LoadContext) -> Any:
        """An Arrow table with its rows' versions (and delete flags, when the pipeline declares markers)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        base = ctx.base_version
        table = table.append_column(VERSION, version_array(base, table.num_rows))
        deletes = self.spec.deletes
        if deletes is not None and deletes.field in table.column_names:
            flags = pc.fill_null(pc.equal(table[deletes.field], pa.scalar(deletes.value)), False)
            table = table.append_column(DELETED, pc.cast(flags, pa.uint8()))
        return table

    def load_arrow(self, table: Any, ctx: LoadContext) -> int:
        """Insert an Arrow table of the model's fields as it is (a clean batch that travelled as Arrow), with the
        lineage column added and the batch (or part) id as the dedup token."""

        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        self.ensure_table(model)
        if not table.num_rows:
            return 0
        if self.superseded(ctx.batch_id):
            return int(table.num_rows)  # a parent batch after the replay that removed it: loaded as the replay's
        try:
            self.client().insert_arrow(
                self.qualified,
                self._stamp(
                    table.append_column(lineage.LINEAGE, lineage.lineage_array(ctx.batch_id, table.num_rows)), ctx
                ),
                settings={"insert_deduplication_token": ctx.dedup_token},
            )
        except Exception as exc:
            raise _wrap(exc, f"inserting batch {ctx.batch_id} into {self.qualified}") from exc
        return int(table.num_rows)

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Arrow insert (column-oriented when a column needs converting), the batch (or part) id as the dedup token."""
        # Measured on the benchmark's 6 columns (int, DateTime64, strings, float; 80k rows, chdb, CPU per row):
        # column-oriented insert of Python values 0.9 (converting) + 9.8 us; Arrow arrays 1.6 + insert_arrow 0.7 us.
        # Once validation stopped building models (jetl.records) the insert was most of the stage.
        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        self.ensure_table(model)
        if not records:
            return 0
        if self.superseded(ctx.batch_id):
            return len(records)  # a parent batch after the replay that removed it: loaded as the replay's
        table = self.arrow(records, model, ctx.batch_id)
        if table is None:
            names, columns = self.columns(records, model)
            base, deletes = ctx.base_version, self.spec.deletes
            names = [*names, lineage.LINEAGE, VERSION]
            columns = [*columns, [ctx.batch_id] * len(records), list(range(base, base + len(records)))]
            if deletes is not None:
                names, columns = [*names, DELETED], [*columns, [int(deletes(r)) for r in records]]
        try:
            if table is not None:
                self.client().insert_arrow(
                    self.qualified, self._stamp(table, ctx), settings={"insert_deduplication_token": ctx.dedup_token}
                )
            else:
                self.client().insert(
                    self.qualified,
                    columns,
                    column_names=names,
                    column_oriented=True,
                    settings={"insert_deduplication_token": ctx.dedup_token},
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

    # Versions: the rows as the destination means them (jetl.protocols.VersionedLoader).

    def current_sql(self, runs: RunView | None = None) -> str:
        """SELECT of the current rows (`jetl.loaders.clickhouse.versions.current`); under replace it reads which
        runs the table holds first, to pick the newest complete one."""
        if self._model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        if self.qualified not in self._ready:  # not loaded into yet by this process: learn whether its engine folds,
            try:  # and give a table made by an earlier jetl the columns the first load would
                c = self.client()
                if self._check_engine(c):
                    for alter in [lineage.add_column(self.qualified), *versions.add_columns(self.qualified)]:
                        c.command(alter)
            except ConfigError:
                raise
            except Exception as exc:
                raise _wrap(exc, f"reading the engine of {self.qualified}") from exc
        runs = runs or RunView()
        only: list[str] | None = None
        if self.mode == "replace":
            try:
                tops = self.client().query(versions.runs_by_version(self.qualified)).result_rows
            except Exception as exc:
                raise _wrap(exc, f"reading the runs of {self.qualified}") from exc
            only = newest_source([(str(run), int(v)) for run, v in tops], runs)
        return versions.current(
            self._table_ref(),
            [*self._model.model_fields, *self._evolved_columns()],
            self.mode,
            self.spec.key,
            final=self._folds,
            version_column=self.version_column,
            only=only,
            leave_out=sorted(runs.superseded),
        )

    def _evolved_columns(self) -> list[str]:
        """Columns the table has beyond the schema's fields and jetl's own (`_jetl_*`): those `schema_contract=
        "evolve"` added (docs/schema.md), which the current rows show too (none before the table exists)."""
        model = self._model.model_fields if self._model is not None else {}
        try:
            names = self.client().query(
                "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String} ORDER BY position",
                parameters={"d": self._database_name(), "t": self.table},
            )
        except Exception as exc:
            raise _wrap(exc, f"reading the columns of {self.qualified}") from exc
        return [n for (n,) in names.result_rows if n not in model and not str(n).startswith("_jetl_")]

    def _database_name(self) -> str:
        """The table's database: the configured one, else the connection's current one."""
        if self.database:
            return self.database
        self._table_ref()
        assert self._database is not None
        return self._database

    def _table_ref(self) -> str:
        """The table, qualified by its database even when none is configured (a query's WITH clause named as the
        table must not read itself)."""
        if self.database:
            return self.qualified
        if self._database is None:
            try:
                self._database = str(self.client().command("SELECT currentDatabase()"))
            except Exception as exc:
                raise _wrap(exc, "asking for the current database") from exc
        return f"{quote(self._database)}.{quote(self.table)}"

    def current_rows(self, pipeline: str, runs: RunView | None = None, limit: int | None = None) -> list[Record]:
        """The current rows as dicts (empty when the table does not exist yet), with lineage and version."""
        sql = self.current_sql(runs)
        if limit is not None:
            sql = f"SELECT * FROM ({sql}) ORDER BY {quote(VERSION)} DESC LIMIT {int(limit)}"
        try:
            result = self.client().query(sql)
        except Exception as exc:
            if _missing_table(exc):
                return []
            raise _wrap(exc, f"reading the current rows of {self.qualified}") from exc
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def count_current(self, pipeline: str, runs: RunView | None = None) -> int:
        """How many current rows the table holds (0 when it does not exist yet)."""
        return self.current_count(runs)

    def current_count(self, runs: RunView | None = None) -> int:
        """How many current rows the table holds (0 when it does not exist yet)."""
        row = self._row(f"SELECT count() FROM ({self.current_sql(runs)})", "counting the current rows of")
        return 0 if row is None else int(row[0])

    def query(
        self, sql: str, *, runs: RunView | None = None, current: bool = True, max_rows: int = 1000, seconds: float = 30
    ) -> tuple[list[str], list[list[Any]], bool]:
        """(column names, rows, truncated) of one read-only SELECT; with `current`, the table's name in it reads its
        current rows. At most `max_rows` rows and `seconds` of work: ClickHouse stops it past either."""
        text = sql.strip().rstrip(";").strip()
        if ";" in text:
            raise TerminalError("one statement at a time: the query holds a ';'")
        if text[:6].upper() != "SELECT" and text[:4].upper() != "WITH":
            raise TerminalError("only SELECT (or WITH ... SELECT) queries are read")
        if current:
            text = versions.scoped(text, self.table, self.current_sql(runs))
        settings = {
            "readonly": 2,
            "max_result_rows": max_rows + 1,
            "result_overflow_mode": "break",
            "max_execution_time": max(1, int(seconds)),
        }
        try:
            result = self.client().query(text, settings=settings)
        except Exception as exc:
            raise _wrap(exc, f"querying {self.qualified}") from exc
        rows = [list(r) for r in result.result_rows]
        return list(result.column_names), rows[:max_rows], len(rows) > max_rows

    # Lineage: what replay, diff and the ledger need from the destination (jetl.protocols.LineageLoader).

    def rows_by_run(self, pipeline: str) -> dict[str, int]:
        """Rows per run id that wrote them ("" for rows loaded before the lineage column existed)."""
        try:
            rows = self.client().query(lineage.rows_by_run(self.qualified)).result_rows
            return {str(run): int(n) for run, n in rows}
        except Exception as exc:
            if _missing_table(exc):
                return {}
            raise _wrap(exc, f"counting {self.qualified} by run") from exc

    def remove_batch(self, pipeline: str, batch_id: str) -> None:
        """Delete the rows one batch wrote (a lightweight DELETE; deleting nothing is fine), having first written it
        down as superseded, so that it is not inserted again: a parent batch delivered after its replay (late, or
        again) would otherwise be, and a merge could keep its copy of a record instead of the replay's, which the
        next removal of the batch then deletes."""
        try:
            c = self.client()
            self._ensure_superseded(c)
            c.command(lineage.mark_superseded(self._superseded, self.table, batch_id))
            c.command(lineage.remove_batch(self.qualified, batch_id))
        except Exception as exc:
            if _missing_table(exc):
                return
            raise _wrap(exc, f"removing batch {batch_id} from {self.qualified}") from exc

    def shadow_table(self, run_id: str) -> str:
        """The side table a shadow run writes to: `<table>__shadow_<run id>`."""
        return lineage.shadow_table(self.table, run_id)

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

    def has_shadow(self, pipeline: str, run_id: str) -> bool:
        """Whether the run's shadow table exists."""
        twin = self.shadow(run_id)
        assert isinstance(twin, ClickHouseLoader)
        try:
            return int(self.client().query(f"EXISTS TABLE {twin.qualified}").result_rows[0][0]) == 1
        except Exception as exc:
            raise _wrap(exc, f"looking for {twin.qualified}") from exc

    def diff(self, pipeline: str, parent_run_id: str, shadow_run_id: str, sample: int = 10) -> Diff:
        """The shadow of `shadow_run_id` against the rows `parent_run_id` has in the real table, by `order_by`.

        Rows are compared by a hash of every model column; with no `order_by`, whole rows are matched (as a
        multiset), so a change shows as one row removed and one added.
        """
        if self._model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        twin = self.shadow(shadow_run_id)
        assert isinstance(twin, ClickHouseLoader)
        key = list(self.order_by)
        sql = lineage.diff(self.qualified, twin.qualified, list(self._model.model_fields), key, parent_run_id, sample)
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
        values = [c for c in self._model.model_fields if c not in key]
        if key and out.changed and values:
            sql = lineage.column_diff(self.qualified, twin.qualified, values, key, parent_run_id)
            try:
                counts = self.client().query(sql).result_rows[0]
            except Exception as exc:
                raise _wrap(exc, f"diffing the columns of {twin.qualified} against run {parent_run_id}") from exc
            out.columns = {c: int(n) for c, n in zip(values, counts, strict=True) if n}
        return out


_CH_TYPES = {"bigint": "Int64", "float": "Float64", "decimal": "Decimal(38, 9)", "text": "String", "bool": "Bool"}
"""The column type of each lattice type (`jetl.evolution`)."""


def _bare_type(type_: str) -> str:
    """A column type without `Nullable(...)`."""
    return type_[9:-1] if type_.startswith("Nullable(") else type_


def _lattice(type_: str) -> str | None:
    """A ClickHouse column type's place on the evolution lattice (None: off it)."""
    t = type_.removeprefix("LowCardinality(").removesuffix(")") if type_.startswith("LowCardinality(") else type_
    if t in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32"):
        return "bigint"
    if t in ("Float32", "Float64"):
        return "float"
    if t.startswith("Decimal"):
        return "decimal"
    return {"String": "text", "Bool": "bool"}.get(t)


def _bare(sql: str) -> str:
    """SQL text without spaces and back quotes, to compare an engine as ClickHouse reports it."""
    return sql.replace(" ", "").replace("`", "")
