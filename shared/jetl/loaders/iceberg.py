"""`IcebergLoader`: appends each batch to an Apache Iceberg table through pyiceberg (`pip install 'jetl[iceberg]'`).

The catalog is a SQL catalog: SQLite in the warehouse folder by default (`<warehouse>/catalog.db`), any SQLAlchemy
URL (PostgreSQL in production) with `catalog_uri`; the warehouse is a folder or an object store URL (`s3://...`).

Exactly once: each append is one Iceberg commit whose snapshot summary holds the batch's dedup token
(`jetl.batch`). Before appending, the loader looks for the token in the table's snapshots; a commit that loses a race
with another replica's (the catalog refuses a stale one) is retried after a refresh, which then finds the token if
that replica wrote the same batch. Rows carry `_jetl_version`, `_jetl_deleted` and `_jetl_batch_id`; reads merge on
read as the disposition says (`jetl.loaders.versions.current`, as the file loader does), and a replayed batch
removes its parent's rows with a delete by lineage (a new snapshot; time travel still shows the old one). Tables are
created with pyiceberg's own commit retry off (`commit.retry.num-retries=0`): it would re-apply a losing append on
top of the winner's, which for the same batch is a second copy.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import time
import warnings
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from jetl.errors import ConfigError, DestinationUnavailable, TerminalError
from jetl.loaders import versions
from jetl.loaders.clickhouse.lineage import shadow_table
from jetl.loaders.file import _arrow_field, _plain_row, whole_row_diff
from jetl.protocols import DELETED, VERSION, Check, Diff, LoadContext, Loader, Record, RunView, WriteSpec
from jetl.redact import redact_url
from jetl.subjects import check_token

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

TOKEN = "jetl.batch"
"""The snapshot summary property naming the batch (part) a commit appended."""
COMMIT_ATTEMPTS = 20


class IcebergLoader:
    """Append batches to Iceberg table `namespace.table` in `warehouse`, cataloged by a SQL catalog."""

    def __init__(
        self,
        table: str,
        *,
        warehouse: str | os.PathLike[str] = "iceberg",
        catalog_uri: str | None = None,
        namespace: str = "jetl",
        catalog_name: str = "jetl",
    ) -> None:
        check_token(table, "Iceberg table name")
        check_token(namespace, "Iceberg namespace")
        self.table = table
        self.namespace = namespace
        self.catalog_name = catalog_name
        text = str(warehouse)
        self.warehouse = text if "://" in text else f"file://{Path(text).resolve()}"
        self.catalog_uri = catalog_uri or (
            f"sqlite:///{Path(text).resolve() / 'catalog.db'}" if "://" not in text else None
        )
        if self.catalog_uri is None:
            raise ConfigError("IcebergLoader: a warehouse URL needs a catalog_uri (a SQLAlchemy URL)")
        self.spec = WriteSpec()
        self._model: type[BaseModel] | None = None
        self._catalog: Any = None

    def __repr__(self) -> str:
        return f"IcebergLoader({self.table!r})"

    @property
    def identifier(self) -> str:
        """`namespace.table`."""
        return f"{self.namespace}.{self.table}"

    def describe(self) -> str:
        """Where rows go (the catalog URL's password masked)."""
        return f"iceberg:{self.warehouse}#{self.identifier} (catalog {redact_url(self.catalog_uri or '')})"

    def check(self, settings: JetlSettings) -> Check:
        """warn when a local warehouse folder cannot be created; ok otherwise (it does not connect)."""
        if self.warehouse.startswith("file://"):
            folder = Path(self.warehouse.removeprefix("file://"))
            if not (folder.exists() or folder.parent.exists()):
                return Check("warn", f"warehouse folder {folder} cannot be created (no parent folder)")
        return Check("ok", self.describe())

    def reach(self) -> None:
        """Open the catalog and list its namespaces."""
        self.catalog().list_namespaces()

    def check_schema(self, model: type[BaseModel]) -> None:
        """Fail at start-up when a key column is not a field of the model."""
        for col in self.spec.key:
            if col not in model.model_fields:
                raise ConfigError(f"IcebergLoader({self.table}): key column {col!r} is not a field of {model.__name__}")
        self._model = model

    def merge_on(self, key: list[str]) -> None:
        """Merge on read by `key`: `write_as(WriteSpec("merge", key))`."""
        self.write_as(WriteSpec("merge", tuple(key)))

    def write_as(self, spec: WriteSpec) -> None:
        """Write and read back as `spec` says (rows are stored the same way in every disposition)."""
        self.spec = spec

    # The catalog and the table

    def catalog(self) -> Any:
        """The SQL catalog (created on first use, with the warehouse folder)."""
        if self._catalog is None:
            from pyiceberg.catalog.sql import SqlCatalog

            if self.warehouse.startswith("file://"):
                Path(self.warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
            try:
                self._catalog = SqlCatalog(self.catalog_name, uri=self.catalog_uri or "", warehouse=self.warehouse)
            except Exception as exc:
                raise DestinationUnavailable(f"IcebergLoader: cannot open the catalog: {exc}") from exc
        return self._catalog

    def arrow_schema(self, model: type[BaseModel]) -> Any:
        """The model's columns and jetl's, as an Arrow schema."""
        import pyarrow as pa

        fields = [pa.field(n, _arrow_field(f.annotation, list(f.metadata))[0]) for n, f in model.model_fields.items()]
        return pa.schema(
            [
                *fields,
                pa.field(VERSION, pa.decimal128(20, 0)),
                pa.field(DELETED, pa.bool_()),
                pa.field(versions.LINEAGE, pa.string()),
            ]
        )

    def _table(self, model: type[BaseModel] | None, create: bool) -> Any:
        from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError

        catalog = self.catalog()
        try:
            return catalog.load_table(self.identifier)
        except NoSuchTableError:
            if not create or model is None:
                return None
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(self.namespace)
        try:
            # pyiceberg would retry a commit that lost a race on its own, re-applying the append on the new state:
            # jetl retries it instead, after looking for the batch's token again
            properties = {"commit.retry.num-retries": "0"}
            return catalog.create_table(self.identifier, schema=self.arrow_schema(model), properties=properties)
        except TableAlreadyExistsError:
            return catalog.load_table(self.identifier)

    @staticmethod
    def _has(table: Any, token: str) -> bool:
        return any(s.summary is not None and s.summary.get(TOKEN) == token for s in table.snapshots())

    # Writing

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Append the batch as one commit carrying its token, unless a snapshot already carries it."""
        if not records:
            return 0
        import pyarrow as pa
        from pyiceberg.exceptions import CommitFailedException

        model = ctx.schema or self._model
        if model is None:
            raise ConfigError(f"IcebergLoader({self.table}): no schema bound")
        schema = self.arrow_schema(model)
        deletes = self.spec.deletes
        columns: dict[str, Any] = {}
        for name, f in model.model_fields.items():
            type_, conv = _arrow_field(f.annotation, list(f.metadata))
            default = None if f.is_required() else f.get_default(call_default_factory=True)
            values = [r.get(name, default) for r in records]
            columns[name] = pa.array([conv(v) for v in values] if conv else values, type=type_)
        base = ctx.base_version
        columns[VERSION] = pa.array([Decimal(base + i) for i in range(len(records))], type=pa.decimal128(20, 0))
        columns[DELETED] = pa.array([bool(deletes(r)) if deletes else False for r in records], type=pa.bool_())
        columns[versions.LINEAGE] = pa.array([ctx.batch_id] * len(records), type=pa.string())
        data = pa.Table.from_pydict(columns, schema=schema)
        table = self._table(model, create=True)
        for attempt in range(COMMIT_ATTEMPTS):
            if self._has(table, ctx.dedup_token):
                return len(records)  # appended before: a redelivery, or a replica's commit won the race
            try:
                table.append(data, snapshot_properties={TOKEN: ctx.dedup_token})
                return len(records)
            except CommitFailedException:
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # writers that collided spread out
                table = self._table(model, create=False)  # another commit came first: look again
            except Exception as exc:
                raise TerminalError(f"appending batch {ctx.batch_id} to {self.identifier}: {exc}") from exc
        raise DestinationUnavailable(f"{self.identifier}: {COMMIT_ATTEMPTS} commits in a row lost to other writers")

    # Reading

    def stored_rows(self, pipeline: str) -> list[Record]:
        """Every stored row, its `_jetl_version` as an int."""
        table = self._table(None, create=False)
        if table is None:
            return []
        rows: list[Record] = table.scan().to_arrow().to_pylist()
        for r in rows:
            r[VERSION] = int(r[VERSION] or 0)
        return rows

    def current_rows(self, pipeline: str, runs: RunView | None = None, limit: int | None = None) -> list[Record]:
        """The rows as the destination means them (merge on read), with `_jetl_version`."""
        rows = versions.current(self.stored_rows(pipeline), self.spec, runs)
        if limit is not None:
            rows = rows[-limit:] if limit > 0 else []
        return [{k: v for k, v in r.items() if k not in (DELETED, versions.LINEAGE)} for r in rows]

    def count_current(self, pipeline: str, runs: RunView | None = None) -> int:
        """How many current rows there are."""
        return len(self.current_rows(pipeline, runs))

    def count(self) -> int:
        """Rows stored (every version)."""
        table = self._table(None, create=False)
        return 0 if table is None else int(table.scan().to_arrow().num_rows)

    def distinct_keys(self, pipeline: str) -> int:
        """Current rows (one per key under merge)."""
        return self.count_current(pipeline)

    def max_position(self, pipeline: str, column: str, tie_breaker: str | None) -> tuple[Any, Any] | None:
        """The last stored row in (`column`, `tie_breaker`) order: seeds a cursor."""
        rows = [r for r in self.stored_rows(pipeline) if r.get(column) is not None]
        if not rows:
            return None
        best = max(rows, key=lambda r: (r[column], r.get(tie_breaker) if tie_breaker else 0))
        return best[column], best.get(tie_breaker) if tie_breaker else None

    # Lineage

    def rows_by_run(self, pipeline: str) -> dict[str, int]:
        """Rows stored per run id that wrote them."""
        return dict(Counter(versions.run_of(r) for r in self.stored_rows(pipeline)))

    def remove_batch(self, pipeline: str, batch_id: str) -> None:
        """Delete the rows one batch wrote (every part of it): one commit; idempotent."""
        from pyiceberg.expressions import EqualTo

        table = self._table(None, create=False)
        if table is None:
            return
        try:
            with warnings.catch_warnings():  # "did not match any records": removing what is gone is a no-op
                warnings.simplefilter("ignore", UserWarning)
                table.delete(
                    EqualTo(term=versions.LINEAGE, value=batch_id), snapshot_properties={"jetl.removed": batch_id}
                )
        except Exception as exc:
            raise DestinationUnavailable(f"removing batch {batch_id} from {self.identifier}: {exc}") from exc

    def shadow(self, run_id: str) -> Loader:
        """The same loader writing to `<table>__shadow_<run>` in the same catalog."""
        twin = copy.copy(self)
        twin.table = shadow_table(self.table, run_id)
        return twin

    def drop_shadow(self, pipeline: str, run_id: str) -> None:
        """Drop a run's shadow table (idempotent)."""
        from pyiceberg.exceptions import NoSuchTableError

        twin = self.shadow(run_id)
        assert isinstance(twin, IcebergLoader)
        try:
            self.catalog().purge_table(twin.identifier)
        except NoSuchTableError:
            return

    def has_shadow(self, pipeline: str, run_id: str) -> bool:
        """Whether the run's shadow table is in the catalog."""
        twin = self.shadow(run_id)
        assert isinstance(twin, IcebergLoader)
        return bool(self.catalog().table_exists(twin.identifier))

    def diff(self, pipeline: str, parent_run_id: str, shadow_run_id: str, sample: int = 10) -> Diff:
        """The shadow's rows against the parent run's, matched as whole rows (as the file loader does)."""
        twin = self.shadow(shadow_run_id)
        assert isinstance(twin, IcebergLoader)

        def bag(loader: IcebergLoader, run_id: str) -> Counter[bytes]:
            return Counter(
                orjson.dumps(_plain_row(r), option=orjson.OPT_SORT_KEYS, default=str)
                for r in loader.stored_rows(pipeline)
                if versions.run_of(r) == run_id
            )

        return whole_row_diff(bag(self, parent_run_id), bag(twin, shadow_run_id), sample)

    def data_files(self) -> list[str]:
        """The Parquet files the table's current snapshot reads (for another engine to read them)."""
        table = self._table(None, create=False)
        return [] if table is None else [task.file.file_path for task in table.scan().plan_files()]
