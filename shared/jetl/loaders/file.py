"""File loader: JSONL, CSV or Parquet part files named by batch id, written atomically (temp file + rename).

Layout: `<root>/<pipeline>/[<field>=<value>/]<run_id>/<seq>.<ext>`. A batch always lands in the same part file(s),
so a redelivered batch replaces its parts instead of adding copies. With `partition_by`, each record goes to the
folder of its field's value (Hive style, readable by `pyarrow.dataset(..., partitioning="hive")`, DuckDB, Spark);
the value is percent-encoded, so a hostile value (`../../etc`) stays one folder name inside the root. Parquet parts
leave the partition column out (it is in the folder name; Arrow refuses a column that is in both); JSONL and CSV
parts keep it, for readers that know nothing of partitions.

Versions: every row is written with its `_jetl_version` (and `_jetl_deleted` when the pipeline declares delete
markers), and reads merge on read (`jetl.loaders.versions`): per key the row of the highest version, whatever order
the parts were written in, so a replay of an old run never outranks a later run's rows.

Lineage is the layout itself: a part's folder is the run that wrote it and its name the batch, so a replayed batch
removes exactly its parent's part (`remove_batch`), and a replay being diffed writes under `<root>/.shadow/<run>/`
(no pipeline name starts with a dot) until `drop_shadow`.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import shutil
import threading
import types
import typing
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote
from uuid import UUID

import orjson
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from jetl.errors import ConfigError, DestinationUnavailable
from jetl.loaders import versions
from jetl.messages.ids import split_batch_id
from jetl.messages.wire import dumps
from jetl.protocols import DELETED, VERSION, Check, Diff, LoadContext, Loader, Record, RunView, WriteSpec
from jetl.subjects import check_token

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

Format = Literal["jsonl", "csv", "parquet"]
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_FORMATS = ("jsonl", "csv", "parquet")


def _text(v: Any) -> Any:
    """A value for a text cell: scalars as text, structures as JSON text."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, Enum):
        return _text(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, int | float | Decimal | UUID):
        return str(v)
    return dumps(v).decode()


def partition_dir(field: str, value: Any) -> str:
    """`field=value`, the value percent-encoded into one safe folder name (None: Hive's default partition)."""
    text = NULL_PARTITION if value is None else _text(value)
    return f"{field}={quote(text, safe='')}"


def _arrow_field(annotation: Any, metadata: list[Any]) -> tuple[Any, Callable[[Any], Any] | None]:
    """The Arrow type for a model field and a value converter (None: as it is); unknown types become JSON text."""
    import pyarrow as pa

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return _arrow_field(base, metadata + list(extra))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_field(args[0], metadata) if len(args) == 1 else (pa.string(), _text)
    if origin in (list, set, frozenset):
        elem = typing.get_args(annotation)
        inner, conv = _arrow_field(elem[0], []) if elem else (pa.string(), _text)
        if conv is None:
            return pa.list_(inner), (None if origin is list else list)
        return pa.list_(inner), lambda v, c=conv: None if v is None else [c(x) for x in v]
    if origin is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return pa.int64(), None
        return pa.string(), _text
    scalar = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string(), bytes: pa.binary()}
    if annotation in scalar:
        return scalar[annotation], None
    if isinstance(annotation, type) and issubclass(annotation, datetime):
        return pa.timestamp("us", tz="UTC"), None  # Arrow stores aware values as UTC and takes naive ones as UTC
    if isinstance(annotation, type) and issubclass(annotation, date):
        return pa.date32(), None
    if annotation is Decimal:
        flat = [x for m in metadata for x in ([*m.metadata] if isinstance(m, FieldInfo) else [m])]
        digits = next((m.max_digits for m in flat if getattr(m, "max_digits", None)), 38)
        places = next((m.decimal_places for m in flat if getattr(m, "decimal_places", None) is not None), 9)
        if digits <= 38 and places <= digits:
            return pa.decimal128(digits, places), None
        return pa.string(), _text
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        if all(isinstance(m.value, int) and not isinstance(m.value, bool) for m in annotation):
            return pa.int64(), lambda v: v.value if isinstance(v, Enum) else v
        return pa.string(), _text
    return pa.string(), _text  # UUID, nested models, dicts, Any: text (JSON for structures)


class FileLoader:
    """Writes each batch as part files under `root` in `format`, optionally partitioned by a field's value."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        format: Format = "jsonl",
        partition_by: str | None = None,
        parquet_compression: str = "zstd",
    ) -> None:
        if format not in _FORMATS:
            raise ConfigError(f"FileLoader: unsupported format {format!r}; use one of {list(_FORMATS)}")
        if partition_by is not None and (not partition_by or not partition_by.isidentifier()):
            raise ConfigError(f"FileLoader: partition_by must be a field name, got {partition_by!r}")
        self.root = Path(root)
        self.format: Format = format
        self.partition_by = partition_by
        self.parquet_compression = parquet_compression
        self.spec = WriteSpec()
        """How rows are written and read back (`write_as`): the disposition, primary key and delete marker."""

    @property
    def key(self) -> list[str]:
        """The pipeline's primary key (merge and history read one row per key and version)."""
        return list(self.spec.key)

    def __repr__(self) -> str:
        return f"FileLoader({str(self.root)!r}, format={self.format!r})"

    def describe(self) -> str:
        """Where the parts go."""
        return f"file://{self.root.resolve()}"

    def check(self, settings: JetlSettings) -> Check:
        """error when `root` is a file; ok otherwise (a missing folder is created by the first batch)."""
        if self.root.exists() and not self.root.is_dir():
            return Check("error", f"{self.root} is a file, not a folder")
        return Check("ok", self.describe())

    def reach(self) -> None:
        """Raise OSError when neither the folder nor its parent exists (the first batch creates the folder)."""
        probe = self.root if self.root.exists() else self.root.parent
        if not probe.is_dir():
            raise OSError("neither the folder nor its parent exists")

    def check_schema(self, model: type[BaseModel]) -> None:
        """Fail at start-up when the partition field is not in the model."""
        if self.partition_by and self.partition_by not in model.model_fields:
            raise ConfigError(f"FileLoader: partition_by {self.partition_by!r} is not a field of {model.__name__}")

    def evolve(self, schema: type[BaseModel], evolution: dict[str, Any]) -> list[str]:
        """Nothing to change (`jetl.evolution`): each part file holds the columns of the batch that wrote it, so a
        part written after a field appeared has its column and earlier parts do not (readers take the union)."""
        return []

    def part_path(self, ctx: LoadContext, partition: str | None = None) -> Path:
        """The part file of one batch, or of one part of a batch in parts (in one partition folder), confined to the
        root."""
        run, seq = split_batch_id(ctx.dedup_token)
        base = self.root / ctx.pipeline
        if partition is not None:
            base = base / partition
        path = (base / run / f"{seq}.{self.format}").resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ConfigError(f"FileLoader: {path} is outside {self.root}")
        return path

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Write the part(s) atomically; the same batch id always lands in the same file(s)."""
        if not records:
            return 0
        records = self._stamped(records, ctx.base_version)
        if self.partition_by is None:
            self._write(self.part_path(ctx), records, ctx.schema)
            return len(records)
        groups: dict[str, list[Record]] = {}
        for r in records:
            groups.setdefault(partition_dir(self.partition_by, r.get(self.partition_by)), []).append(r)
        paths = {part: self.part_path(ctx, part) for part in groups}  # check every path before writing any
        drop = self.partition_by if self.format == "parquet" else None
        for part, rows in groups.items():
            self._write(paths[part], rows, ctx.schema, drop)
        return len(records)

    def _stamped(self, records: list[Record], version: int) -> list[Record]:
        """The records with their version (and delete flag) as stored columns."""
        deletes = self.spec.deletes
        if deletes is None:
            return [{**r, VERSION: version + i} for i, r in enumerate(records)]
        return [{**r, VERSION: version + i, DELETED: deletes(r)} for i, r in enumerate(records)]

    def _write(
        self, path: Path, records: list[Record], schema: type[BaseModel] | None, drop: str | None = None
    ) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                if self.format == "jsonl":
                    for r in records:
                        fh.write(dumps(r))
                        fh.write(b"\n")
                elif self.format == "csv":
                    self._write_csv(fh, records, schema)
                else:
                    self._write_parquet(fh, records, schema, drop)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DestinationUnavailable(f"cannot write {path}: {exc}") from exc

    @staticmethod
    def _columns(records: list[Record], schema: type[BaseModel] | None) -> list[str]:
        if schema is not None:
            return [*schema.model_fields, *(c for c in (VERSION, DELETED) if records and c in records[0])]
        return list(dict.fromkeys(k for r in records for k in r))

    def _write_csv(self, fh: Any, records: list[Record], schema: type[BaseModel] | None) -> None:
        cols = self._columns(records, schema)
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text)
        writer.writerow(cols)
        writer.writerows([_text(r.get(c)) for c in cols] for r in records)
        text.flush()
        text.detach()  # leave `fh` open for the fsync

    def _write_parquet(self, fh: Any, records: list[Record], schema: type[BaseModel] | None, drop: str | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if schema is None:
            plain = [{k: _plain(v) for k, v in r.items() if k not in (drop, VERSION)} for r in records]
            table = pa.Table.from_pylist(plain)  # the versions may not fit int64, which Arrow would infer
            table = table.append_column(VERSION, pa.array([r[VERSION] for r in records], type=pa.uint64()))
        else:
            fields = {
                n: _arrow_field(f.annotation, list(f.metadata)) for n, f in schema.model_fields.items() if n != drop
            }
            arrays = {
                n: pa.array([conv(r.get(n)) if conv else r.get(n) for r in records], type=t)
                for n, (t, conv) in fields.items()
            }
            arrays[VERSION] = pa.array([r[VERSION] for r in records], type=pa.uint64())
            if DELETED in records[0]:
                arrays[DELETED] = pa.array([r[DELETED] for r in records], type=pa.bool_())
            table = pa.Table.from_pydict(arrays)
        pq.write_table(table, fh, compression=self.parquet_compression)

    def merge_on(self, key: list[str]) -> None:
        """Merge on read by `key` (a pipeline's primary key): `write_as(WriteSpec("merge", key))`."""
        self.write_as(WriteSpec("merge", tuple(key)))

    def write_as(self, spec: WriteSpec) -> None:
        """Write and read back as `spec` says. Parts stay as written (a batch is one part, so replay and lineage
        work the same in every disposition); reads apply the disposition (`current_rows`)."""
        self.spec = spec

    def read_all(self, pipeline: str) -> list[dict[str, Any]]:
        """Every record written for a pipeline, part by part, without jetl's columns (tests and the demo read back
        with this)."""
        return [_plain_row(r) for part in self._parts(pipeline) for r in self._read_part(part, pipeline)]

    def stored_rows(self, pipeline: str) -> list[dict[str, Any]]:
        """Every row as stored, with its `_jetl_version`, `_jetl_deleted` and the `_jetl_batch_id` of its part."""
        out: list[dict[str, Any]] = []
        for part in self._parts(pipeline):
            lineage = f"{part.parent.name}/{part.stem}"
            for r in self._read_part(part, pipeline):
                r[VERSION] = int(r.get(VERSION) or 0)
                r[DELETED] = r.get(DELETED) in (True, "true", "True", "1", 1)
                r[versions.LINEAGE] = lineage
                out.append(r)
        return out

    def current_rows(self, pipeline: str, runs: RunView | None = None, limit: int | None = None) -> list[Record]:
        """The rows as the destination means them now (`jetl.loaders.versions.current`), with `_jetl_version`."""
        rows = versions.current(self.stored_rows(pipeline), self.spec, runs, _key_text)
        if limit is not None:
            rows = sorted(rows, key=lambda r: int(r.get(VERSION) or 0))[-limit:] if limit > 0 else []
        return [{k: v for k, v in r.items() if k not in (DELETED, versions.LINEAGE)} for r in rows]

    def count_current(self, pipeline: str, runs: RunView | None = None) -> int:
        """How many current rows there are (read and merged here: files have no engine to ask)."""
        return len(self.current_rows(pipeline, runs))

    def read_merged(self, pipeline: str) -> list[dict[str, Any]]:
        """The pipeline's rows as the destination means them (`current_rows`), without jetl's columns."""
        return [_plain_row(r) for r in self.current_rows(pipeline)]

    def distinct_keys(self, pipeline: str) -> int:
        """Distinct primary keys among the pipeline's current rows (every current row when there is no key)."""
        rows = self.current_rows(pipeline)
        if not self.key:
            return len(rows)
        return len({_key_text(r, self.spec.key) for r in rows})

    def max_position(self, pipeline: str, column: str, tie_breaker: str | None) -> tuple[Any, Any] | None:
        """The last row in (`column`, `tie_breaker`) order among the pipeline's rows (None when none has a value),
        read part by part: seeds a cursor. Values compare as the parts hold them (ISO text sorts as time)."""
        best: tuple[Any, Any] | None = None
        for part in self._parts(pipeline):
            for row in self._read_part(part, pipeline):
                value = row.get(column)
                if value is None:
                    continue
                here = (value, row.get(tie_breaker) if tie_breaker else None)
                if best is None or (here[0], here[1] if here[1] is not None else "") > (
                    best[0],
                    best[1] if best[1] is not None else "",
                ):
                    best = here
        return best

    def _parts(self, pipeline: str, run_id: str | None = None) -> list[Path]:
        """A pipeline's part files (of one run), in order; the folder a part sits in is the run that wrote it."""
        found = sorted((self.root / pipeline).rglob(f"*.{self.format}"))
        return [p for p in found if not p.name.startswith(".") and run_id in (None, p.parent.name)]

    def _read_part(self, part: Path, pipeline: str) -> list[dict[str, Any]]:
        if self.format == "jsonl":
            return [orjson.loads(line) for line in part.read_bytes().splitlines() if line]
        if self.format == "csv":
            with open(part, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(part).to_pylist()
        if self.partition_by:  # put back the partition column, as text, from the folder name
            value = _partition_value(part.relative_to(self.root / pipeline).parts[0], self.partition_by)
            rows = [{**r, self.partition_by: value} for r in rows]
        return rows

    def _count_part(self, part: Path) -> int:
        if self.format == "jsonl":
            return sum(1 for line in part.read_bytes().splitlines() if line.strip())
        if self.format == "csv":
            with open(part, newline="", encoding="utf-8") as fh:
                return max(0, sum(1 for _ in csv.reader(fh)) - 1)
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(part).metadata.num_rows)

    # Lineage: what replay, diff and the ledger need from the destination (jetl.protocols.LineageLoader).

    def rows_by_run(self, pipeline: str) -> dict[str, int]:
        """Rows per run id, counted from the part files (lines, CSV rows or Parquet row counts)."""
        out: dict[str, int] = {}
        for part in self._parts(pipeline):
            out[part.parent.name] = out.get(part.parent.name, 0) + self._count_part(part)
        return out

    def remove_batch(self, pipeline: str, batch_id: str) -> None:
        """Delete one batch's part file(s), in every partition folder (and each part of a batch in parts)."""
        run, seq = split_batch_id(batch_id)
        for part in self._parts(pipeline, run):
            if part.stem == seq or part.stem.startswith(f"{seq}-part"):
                try:
                    part.unlink(missing_ok=True)
                except OSError as exc:
                    raise DestinationUnavailable(f"cannot remove {part}: {exc}") from exc
                _fsync_dir(part.parent)

    def shadow_root(self, run_id: str) -> Path:
        """`<root>/.shadow/<run_id>`, resolved; ConfigError unless it is one folder right inside `<root>/.shadow`."""
        shadows = (self.root / ".shadow").resolve()
        folder = (shadows / check_token(run_id, "run id")).resolve()
        if folder.parent != shadows:
            raise ConfigError(f"FileLoader: shadow {folder} is outside {shadows}")
        return folder

    def shadow(self, run_id: str) -> Loader:
        """The same loader writing under `<root>/.shadow/<run_id>/`."""
        twin = copy.copy(self)
        twin.root = self.shadow_root(run_id)
        return twin

    def drop_shadow(self, pipeline: str, run_id: str) -> None:
        """Delete a run's shadow folder (only ever a folder inside `<root>/.shadow`)."""
        shutil.rmtree(self.shadow_root(run_id), ignore_errors=True)

    def has_shadow(self, pipeline: str, run_id: str) -> bool:
        """Whether the run's shadow folder is there."""
        return self.shadow_root(run_id).is_dir()

    def diff(self, pipeline: str, parent_run_id: str, shadow_run_id: str, sample: int = 10) -> Diff:
        """The shadow's records against the parent run's parts, matched as whole records (files have no key)."""
        twin = self.shadow(shadow_run_id)
        assert isinstance(twin, FileLoader)

        def bag(loader: FileLoader, run_id: str) -> Counter[bytes]:
            return Counter(
                orjson.dumps(_plain_row(r), option=orjson.OPT_SORT_KEYS)
                for part in loader._parts(pipeline, run_id)
                for r in loader._read_part(part, pipeline)
            )

        return whole_row_diff(bag(self, parent_run_id), bag(twin, shadow_run_id), sample)


def whole_row_diff(old: Counter[bytes], new: Counter[bytes], sample: int) -> Diff:
    """The diff of two bags of rows (as sorted-key JSON) matched whole: what loaders without a key compare."""
    added, removed = new - old, old - new
    return Diff(
        key=[],
        added=added.total(),
        removed=removed.total(),
        unchanged=(old & new).total(),
        columns=_column_changes(added, removed),
        samples={
            kind: [orjson.loads(r) for r in list(c)[:sample]]
            for kind, c in (("added", added), ("removed", removed))
            if c
        },
    )


def _key_text(row: Record, key: tuple[str, ...]) -> tuple[Any, ...]:
    """A row's key as text: the same key reads the same from JSONL, CSV and Parquet parts."""
    return tuple(_text(row.get(k)) for k in key)


def _plain_row(row: Record) -> Record:
    """A row without jetl's stored columns."""
    return {k: v for k, v in row.items() if not k.startswith("_jetl_")}


def _column_changes(added: Counter[bytes], removed: Counter[bytes]) -> dict[str, int]:
    """Per column, the values the added records have that the removed ones do not (files have no key, so a row
    whose one column changed shows as one removed and one added record, and as 1 under that column)."""
    new: dict[str, Counter[bytes]] = {}
    old: dict[str, Counter[bytes]] = {}
    for records, into in ((added, new), (removed, old)):
        for raw, n in records.items():
            for column, value in orjson.loads(raw).items():
                into.setdefault(column, Counter())[orjson.dumps(value)] += n
    out = {c: (values - old.get(c, Counter())).total() for c, values in new.items()}
    return {c: n for c, n in sorted(out.items()) if n}


def _partition_value(folder: str, field: str) -> str | None:
    """The value a `field=value` folder name stands for."""
    name, _, value = folder.partition("=")
    if name != field:
        raise ConfigError(f"FileLoader: {folder!r} is not a {field!r} partition folder")
    return None if value == NULL_PARTITION else unquote(value)


def _plain(v: Any) -> Any:
    """Values Arrow cannot infer, made plain (when no schema is known)."""
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, UUID):
        return str(v)
    if isinstance(v, set | frozenset):
        return sorted(v)
    if isinstance(v, datetime) and v.tzinfo is None:
        return v.replace(tzinfo=UTC)
    return v


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
