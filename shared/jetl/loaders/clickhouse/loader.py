"""`ClickHouseLoader`: writes batches into a table made from the pipeline's record model, exactly once per batch.

Every insert carries `insert_deduplication_token = batch_id` (the part's id for a batch in parts,
`LoadContext.dedup_token`) on a table created with a deduplication window, so a redelivered or replayed batch is not
loaded twice. `mode="merge"` makes a ReplacingMergeTree keyed on `order_by`
(newest `version_column` wins), so re-loading a changed row leaves one row once merged (`SELECT ... FINAL`). It is a
`LineageLoader` too: rows per run, removing a batch, shadow tables and diffs, all by the lineage column
(`jetl.loaders.clickhouse.lineage`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

import jetl.loaders.clickhouse.lineage as lineage
from jetl.errors import ConfigError, TerminalError
from jetl.loaders.clickhouse.client import _missing_table, _wrap, get_client
from jetl.loaders.clickhouse.lineage import LINEAGE_COLUMN
from jetl.loaders.clickhouse.sql import PARTITION, create_table, quote
from jetl.loaders.clickhouse.types import Convert, arrow_types_for, columns_for, converters_for
from jetl.protocols import Check, Diff, LoadContext, Loader, Record
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

    def merge_on(self, key: list[str]) -> None:
        """Keep one row per `key` (a pipeline's primary key): a ReplacingMergeTree ordered by it, where the row
        inserted last wins (the insert order is the version, unless `version_column` names one)."""
        for col in key:
            quote(col)
        if self.order_by and self.order_by != list(key):
            raise ConfigError(
                f"ClickHouseLoader({self.table}): order_by {self.order_by} differs from the pipeline's primary key "
                f"{list(key)}; a merge table keeps one row per order_by, so leave order_by out or make them equal"
            )
        self.mode, self.order_by = "merge", list(key)

    def distinct_keys(self, pipeline: str) -> int:
        """Distinct `order_by` keys in the table (its row count once merged; 0 when it does not exist yet)."""
        if not self.order_by:
            return self.count()
        keys = ", ".join(quote(c) for c in self.order_by)
        row = self._row(f"SELECT uniqExact({keys}) FROM {self.qualified}", "counting keys of")
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
        return None if row is None else (row[0], row[1] if tie_breaker else None)

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
            [*columns_for(model), LINEAGE_COLUMN],
            order_by=self.order_by,
            version_column=self.version_column,
            merge=self.mode == "merge",
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
            self._check_engine(c)
            # a table created before the lineage column existed gets it (its old rows read as "")
            c.command(lineage.add_column(key))
        except Exception as exc:
            raise _wrap(exc, f"creating {key}") from exc
        self._ready.add(key)

    def _check_engine(self, c: Any) -> None:
        """A merge loader over a table made in append mode would append: refuse it rather than load duplicates."""
        if self.mode != "merge":
            return
        database = f"'{self.database}'" if self.database else "currentDatabase()"
        rows = c.query(f"SELECT engine FROM system.tables WHERE database = {database} AND name = '{self.table}'")
        engine = str(rows.result_rows[0][0]) if rows.result_rows else ""
        if engine and "Replacing" not in engine:
            raise ConfigError(
                f"ClickHouseLoader({self.table}): the table exists as {engine}, made before the pipeline declared a "
                "primary key; it would keep every copy of a row. Rebuild it as a ReplacingMergeTree ordered by the key "
                f"(CREATE TABLE ... AS ... ENGINE = ReplacingMergeTree ORDER BY ({', '.join(self.order_by)}), "
                "INSERT ... SELECT, EXCHANGE TABLES)"
            )

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

    def load_arrow(self, table: Any, ctx: LoadContext) -> int:
        """Insert an Arrow table of the model's fields as it is (a clean batch that travelled as Arrow), with the
        lineage column added and the batch (or part) id as the dedup token."""

        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"ClickHouseLoader({self.table}): no schema bound")
        self.ensure_table(model)
        if not table.num_rows:
            return 0
        try:
            self.client().insert_arrow(
                self.qualified,
                table.append_column(lineage.LINEAGE, lineage.lineage_array(ctx.batch_id, table.num_rows)),
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
        table = self.arrow(records, model, ctx.batch_id)
        if table is None:
            names, columns = self.columns(records, model)
            names, columns = [*names, lineage.LINEAGE], [*columns, [ctx.batch_id] * len(records)]
        try:
            if table is not None:
                self.client().insert_arrow(
                    self.qualified, table, settings={"insert_deduplication_token": ctx.dedup_token}
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
        """Delete the rows one batch wrote (a lightweight DELETE; deleting nothing is fine)."""
        try:
            self.client().command(lineage.remove_batch(self.qualified, batch_id))
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
