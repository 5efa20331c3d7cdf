"""The three plugin contracts, and the optional capabilities a connector may declare beside them.

Built-in connectors implement them; so can yours (`docs/contributing.md`, the suites in `jetl.testing.contracts`).
A connector must implement `Extractor`, `Transformer` or `Loader`; everything else here is optional, one protocol per
capability (a fast path, partitioning, a cursor an operator can set, a destination the loader service binds and
probes). A caller asks the type (`isinstance(loader, ArrowLoader)`), never `getattr(loader, "load_arrow", None)`,
so this module is the whole list of what a connector may implement and what the services do with it.

Capabilities are `runtime_checkable` Protocols rather than one capabilities object per connector (dlt's destination
capabilities): the three plugin contracts already are (a `Pipeline` checks `isinstance(ex, Extractor)`), a connector
needs no base class and no second declaration that could drift from the methods it has (implementing
`load_arrow` is declaring it), and mypy checks the signatures against the protocol wherever a connector is passed as
one. What `isinstance` cannot see is a value: it tells that `keeps_cursor` or `takes_arrow` exists, not that it is
True, so the helpers at the end (`keeps_cursor`, `takes_arrow`, `fields_out`) read both, and callers use them.
The protocols come from `typing_extensions`: on Python 3.11 it backports 3.12's runtime checks, the same semantics on
every version (members looked up without running properties or `__getattr__`) at a fraction of the cost (a match 2-3 us
instead of 35, measured on the loaded 2-core bench host). The transformer stage asks a few per batch, not per record.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel
from typing_extensions import Protocol, runtime_checkable

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

Record = dict[str, Any]


class Unreadable(tuple[str, str]):
    """(origin, reason) of input an extractor could not read as a record, with the input as read (`input`) where it
    has it (a CSV or JSON line): its dead letter keeps that body. It unpacks as the pair a plain tuple is."""

    input: str | None

    def __new__(cls, origin: str, reason: str, input: str | None = None) -> Unreadable:
        self = super().__new__(cls, (origin, reason))
        self.input = input
        return self


@dataclass
class Chunk:
    """A bounded slice of extracted records, with where each came from when known."""

    records: list[Record]
    origins: list[str] | None = None
    position: dict[str, Any] | None = None
    """Where the extractor stands after this chunk (file and line, page, high-water mark)."""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """Input the extractor could not read at all: (origin, reason), an `Unreadable` where the input itself is kept.
    Goes to the DLQ (with that input), never dropped."""
    raw: list[bytes] | None = None
    """The records as JSON texts not yet parsed, one object each on one line, given instead of `records` when
    `ExtractContext.raw_json` asks for them. They travel as they are; the transformer parses them together with
    validating them (one pydantic pass over the batch), and rejects a text that is not one JSON object, with its
    origin. A JSONL file read this way costs its extractor 0.4 us a line instead of 1.9 (bench/README.md)."""
    origin_runs: list[tuple[str, int, int]] | None = None
    """`origins` as runs of (prefix, first, count): `("f.jsonl:", 1, 3)` is f.jsonl:1, :2 and :3 (`Batch.origin_runs`).
    An extractor that numbers its records gives these instead of a string per record."""

    version: int | None = None
    """The version of its first record in the source's own log (record i has `version + i`), given by an extractor
    that reads a log (`PostgresCDCExtractor`: the commit's LSN): the batch cut from it carries it (`Batch.version`)
    instead of its JETL_RAW sequence. The chunks of a run must then each be consecutive and increasing (a chunk's
    first version above the previous chunk's last), so that any cut of them into batches keeps the order."""

    @property
    def count(self) -> int:
        """How many records (or JSON texts) the chunk holds."""
        return len(self.raw) if self.raw is not None else len(self.records)

    @property
    def items(self) -> list[Any]:
        """The records, or their JSON texts when they are not parsed."""
        return self.raw if self.raw is not None else self.records

    def origin_list(self) -> list[str]:
        """One origin per record ("" where unknown)."""
        if self.origins is not None:
            return self.origins
        if self.origin_runs is not None:
            return [f"{prefix}{i}" for prefix, first, n in self.origin_runs for i in range(first, first + n)]
        return [""] * self.count


@dataclass
class ExtractContext:
    """What an extractor knows about the run it serves."""

    pipeline: str
    run_id: str
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    cursor: dict[str, Any] | None = None
    """The state the last completed run left (high-water mark, files already loaded)."""
    params: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    raw_json: bool = False
    """The caller takes records as unparsed JSON texts (`Chunk.raw`): the extractor service does, since its
    transformer parses and validates in one pass. An extractor that reads JSON lines may hand them over as they are."""


@dataclass
class LoadContext:
    """What a loader knows about the batch it writes."""

    pipeline: str
    run_id: str
    batch_id: str
    schema: type[Any] | None = None
    part_id: str = ""
    """The id of the records written, when the batch travels in parts (`Batch.part_id`); empty: the batch id."""
    version: int | None = None
    """The version of the batch's first record (`Batch.version`); record i has `version + i`. Where a key has rows
    of several versions, the highest is the row the destination means (`WriteSpec`)."""

    @property
    def base_version(self) -> int:
        """`version`, or for a batch that came without one a version of its own after every versioned batch
        (`UNVERSIONED` plus a stride chosen by the write's dedup token, so a redelivery gets the same one)."""
        if self.version is not None:
            return self.version
        digest = int.from_bytes(hashlib.blake2b(self.dedup_token.encode(), digest_size=8).digest(), "big")
        return UNVERSIONED + (digest >> 25) * VERSION_STRIDE

    @property
    def dedup_token(self) -> str:
        """What a write of these records is deduplicated on: writing the same token twice leaves one copy."""
        return self.part_id or self.batch_id


VERSION_STRIDE = 1 << 24
"""Versions per raw batch: a batch's records are numbered inside its log position's stride (batch_size is at most
1,000,000, a fan-out may grow a batch past it: 16,777,216 leaves room, and 2**64 / stride positions are 2**40)."""


def log_version(log_position: int, offset: int = 0) -> int:
    """The version of record `offset` of the raw batch at `log_position` (its JETL_RAW stream sequence): versions
    order records as the source's log does, batch by batch, then record by record."""
    return log_position * VERSION_STRIDE + min(offset, VERSION_STRIDE - 1)


VERSION = "_jetl_version"
"""The destination column holding each row's version (`log_version`)."""
DELETED = "_jetl_deleted"
"""The destination column marking a row as a delete (1) rather than a state (0)."""
VALID_FROM, VALID_TO, IS_CURRENT = "_jetl_valid_from", "_jetl_valid_to", "_jetl_is_current"
"""The columns a history read adds: the version a row became current at, the version that replaced or deleted it
(None while current), and whether it is current."""
UNVERSIONED = 1 << 63
"""Where versions of batches that came without one start (a redrive of records the loader rejected): after every
versioned batch, ordered among themselves by their message's place on JETL_CLEAN."""

Disposition = Literal["append", "merge", "replace", "history"]
"""How a run's rows land (named as in dlt): `append` adds them; `merge` keeps one row per primary key, the one of the
highest version (a delete marker removes the key); `replace` shows only the newest complete run's rows (a full
refresh); `history` keeps every version of a key with the span it was current in (SCD2)."""
DISPOSITIONS: tuple[Disposition, ...] = ("append", "merge", "replace", "history")


@dataclass(frozen=True)
class Deletes:
    """Which records are delete markers: those whose `field` equals `value` (a bool flag: `Deletes("deleted")`; an
    operation column: `Deletes("op", "d")`). Under `merge` a marker removes its key; under `history` it closes it."""

    field: str
    value: Any = True

    def __call__(self, record: Record) -> bool:
        """Whether `record` is a delete marker."""
        return bool(record.get(self.field) == self.value)


@dataclass(frozen=True)
class WriteSpec:
    """How a pipeline's rows are written and read back: its disposition, primary key and delete marker."""

    disposition: Disposition = "append"
    key: tuple[str, ...] = ()
    """The primary key (merge and history need one)."""
    deletes: Deletes | None = None
    """Which records are delete markers (merge and history)."""


@dataclass(frozen=True)
class RunView:
    """What the run state says about the runs whose rows a destination holds: what reading its current rows needs
    beyond the rows themselves. The default knows nothing: every run is its own, complete and not superseded."""

    parents: dict[str, str] = field(default_factory=dict)
    """Replay run -> the run it replays: under `replace` a replay stands for its parent."""
    incomplete: frozenset[str] = frozenset()
    """Runs not completed yet: under `replace` the table shows the newest complete run, so a refresh is atomic."""
    superseded: frozenset[str] = frozenset()
    """Failed or cancelled attempts that a later attempt re-ran (`<run>-retry<n>`): their rows are not current in
    any disposition."""

    def source(self, run_id: str) -> str:
        """The run whose extraction `run_id`'s rows came from (a replay's parent, transitively)."""
        seen = {run_id}
        while run_id in self.parents and self.parents[run_id] not in seen:
            run_id = self.parents[run_id]
            seen.add(run_id)
        return run_id


@dataclass(frozen=True)
class Partition:
    """One share of a run's input that any extractor replica can extract alone (`Extractor.partitions`)."""

    spec: dict[str, Any]
    """What the partition covers, as JSON (a file, a byte range, a key range, a date window): it travels to the
    replica that extracts it, which hands it back to `extract_partition`."""


class Check(NamedTuple):
    """A connector's verdict on its own configuration, told without reading or writing any data (`jetl validate`)."""

    status: Literal["ok", "warn", "error"]
    """ok: ready to run; warn: it may run but something looks off (no input file yet); error: it cannot run."""
    detail: str
    """What was found, for people: the files matched, the table and server, the folder at fault."""


@runtime_checkable
class Extractor(Protocol):
    """Streams records from a source in bounded chunks."""

    def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """Yield chunks; never hold the whole source in memory."""
        ...

    def next_cursor(self) -> dict[str, Any] | None:
        """The incremental state reached by the last `extract`, or None if the extractor is not incremental."""
        ...

    def check(self, settings: JetlSettings) -> Check:
        """Whether its configuration can work (paths, URLs, credentials present), without extracting anything."""
        ...

    # Optional capabilities: `PartitionedExtractor`, `IncrementalExtractor`, `SeekableExtractor`,
    # `ConfirmingExtractor` (below).


@runtime_checkable
class Transformer(Protocol):
    """Batch in, batch out."""

    def transform(self, records: list[Record]) -> list[Record]:
        """Return the transformed records (fewer to filter, more to fan out)."""
        ...


@runtime_checkable
class Loader(Protocol):
    """Writes a batch idempotently: writing the same batch_id twice leaves one copy."""

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Write the records; return how many were written."""
        ...

    def describe(self) -> str:
        """Where this loader writes, for logs and events."""
        ...

    def check(self, settings: JetlSettings) -> Check:
        """Whether its destination can work as configured (`settings` gives defaults such as the ClickHouse DSN),
        without writing anything."""
        ...


@dataclass
class Diff:
    """How the rows a replay wrote to its shadow differ from the rows its parent run loaded, matched by key."""

    key: list[str]
    """The columns rows are matched on (empty: whole rows are compared, so nothing is ever "changed")."""
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    samples: dict[str, list[Any]] = field(default_factory=dict)
    """A few keys per kind ("added", "removed", "changed"), for people to look at."""
    columns: dict[str, int] = field(default_factory=dict)
    """Changed columns -> how many rows changed in each: with a key, the matched rows whose value differs; without
    one, the values in the added rows that the removed rows do not have. Unchanged columns are left out."""


@runtime_checkable
class KeyedLoader(Protocol):
    """A loader that keeps one row per primary key (`Pipeline(primary_key=...)`): loading a row again replaces it.

    Optional: ClickHouseLoader merges by key (ReplacingMergeTree), FileLoader merges on read.
    """

    def merge_on(self, key: list[str]) -> None:
        """Keep one row per `key` from now on: the row loaded last wins. Called once, at pipeline start-up."""
        ...

    def distinct_keys(self, pipeline: str) -> int:
        """How many distinct keys the destination holds (its row count once merged)."""
        ...

    def max_position(self, pipeline: str, column: str, tie_breaker: str | None) -> tuple[Any, Any] | None:
        """The last row in (`column`, `tie_breaker`) order in the destination, as (value, tie-breaker value or
        None); None when it holds no row with a value: what a cursor is seeded from."""
        ...


@runtime_checkable
class VersionedLoader(Protocol):
    """A loader that writes every disposition (`WriteSpec`) and keeps per key the row of the highest version, in
    whatever order batches arrive: the contract `jetl.testing.contracts.VersionedLoaderContract` checks.

    Optional: ClickHouseLoader (ReplacingMergeTree on the version column), FileLoader (merge on read).
    """

    def write_as(self, spec: WriteSpec) -> None:
        """Write and read back as `spec` says from now on. Called once, at pipeline start-up."""
        ...

    def current_rows(self, pipeline: str, runs: RunView | None = None, limit: int | None = None) -> list[Record]:
        """The rows as the destination means them now (per key the highest version, deletes applied, the newest
        complete run under replace, every version with `_jetl_valid_from`, `_jetl_valid_to`, `_jetl_is_current`
        under history), each with its `_jetl_version`; with `limit`, the newest `limit` of them (highest versions)."""
        ...

    def count_current(self, pipeline: str, runs: RunView | None = None) -> int:
        """How many current rows there are (`current_rows` counted where they are)."""
        ...


@runtime_checkable
class ExclusiveLoader(Protocol):
    """A loader whose destination only one process may open at a time (ClickHouseLoader on chdb): the stack runs
    one loader process when a pipeline has one. A loader without it is written by any number of loader replicas."""

    def exclusive(self, settings: JetlSettings) -> str | None:
        """Why only one loader process may write its destination as configured (None: replicas may share it)."""
        ...


@runtime_checkable
class QueryableLoader(Protocol):
    """A loader whose destination answers SQL (`jetl query`). Optional: ClickHouseLoader."""

    def query(
        self, sql: str, *, runs: RunView | None = None, current: bool = True, max_rows: int = 1000, seconds: float = 30
    ) -> tuple[list[str], list[list[Any]], bool]:
        """(columns, rows, truncated) of one read-only SELECT, at most `max_rows` rows and `seconds` of work; with
        `current`, the destination table's name in it reads its current rows."""
        ...


@runtime_checkable
class LineageLoader(Protocol):
    """A loader that knows which batch wrote each row: the destination side of replay, diff and the ledger.

    Optional: the loader service uses it when a pipeline's loader has it (ClickHouseLoader, FileLoader).
    """

    def rows_by_run(self, pipeline: str) -> dict[str, int]:
        """Rows in the destination per run id that wrote them ("" for rows written without lineage)."""
        ...

    def remove_batch(self, pipeline: str, batch_id: str) -> None:
        """Delete the rows one batch wrote (a replayed batch supersedes its parent's); idempotent."""
        ...

    def shadow(self, run_id: str) -> Loader:
        """This loader, writing to a side table or folder of `run_id` instead of the real destination."""
        ...

    def diff(self, pipeline: str, parent_run_id: str, shadow_run_id: str, sample: int = 10) -> Diff:
        """The shadow of `shadow_run_id` against the rows `parent_run_id` left in the real destination."""
        ...

    def drop_shadow(self, pipeline: str, run_id: str) -> None:
        """Remove a run's shadow (idempotent)."""
        ...

    def has_shadow(self, pipeline: str, run_id: str) -> bool:
        """Whether a run's shadow is still there (a diff drops it unless asked to keep it)."""
        ...


# Optional capabilities of an extractor.


@runtime_checkable
class PartitionedExtractor(Protocol):
    """An extractor whose run replicas can share: it splits the run's input into partitions, any of which one replica
    extracts alone. Without this an extractor is one partition.

    After `partitions`, `next_cursor()` is the cursor the run reaches once every partition is extracted; an extractor
    that cannot know it before extracting must not partition (raise ConfigError when asked to).
    """

    def partitions(self, ctx: ExtractContext) -> list[Partition] | None:
        """The run's input split into shares: an empty list, nothing to read; one, not worth splitting; None, this
        extractor is not partitioned as configured (as if it had no `partitions`)."""
        ...

    def extract_partition(self, ctx: ExtractContext, partition: Partition) -> AsyncIterator[Chunk]:
        """The records of one partition, the same every time."""
        ...


@runtime_checkable
class IncrementalExtractor(Protocol):
    """An extractor that may start each run from the cursor the last completed run left (files already loaded, a
    high-water mark). Runs of a pipeline with one that does never overlap (`Pipeline.keeps_cursor`): a second run
    would read what the first is still loading. Ask with `keeps_cursor(extractor)`."""

    @property
    def keeps_cursor(self) -> bool:
        """True when it does, as configured."""
        ...


@runtime_checkable
class SeekableExtractor(Protocol):
    """An extractor whose cursor an operator can set to a value (`jetl cursor set`, `jetl.ops.cursors`)."""

    @property
    def cursor_field(self) -> str | None:
        """The record field the cursor follows."""
        ...

    @property
    def cursor_tie_breaker(self) -> str | None:
        """The record field that orders rows with the same `cursor_field` value, if any."""
        ...

    def cursor_at(self, value: Any, key: Any = None) -> dict[str, Any]:
        """The cursor of the position strictly after (`value`, `key`)."""
        ...


@runtime_checkable
class ConfirmingExtractor(Protocol):
    """An extractor that tells its source what the run has published: a log reader whose source keeps changes until
    told (a PostgreSQL replication slot). The extractor service calls `confirm` once every batch of the run is
    acknowledged by JetStream, and never before: a kill between publish and confirm reads the same changes again,
    into batches with the same ids, which JetStream drops as duplicates."""

    async def confirm(self, ctx: ExtractContext) -> None:
        """Let the source forget what the run `ctx` extracted (every batch of it is on JETL_RAW)."""
        ...

    async def release(self, ctx: ExtractContext) -> None:
        """Free what the run `ctx` holds without confirming it: a partitioned run that failed (the replica that
        planned it calls `confirm` once every partition is extracted, `release` when the run failed instead)."""
        ...


@runtime_checkable
class WriteCheckingExtractor(Protocol):
    """An extractor whose records mean something only under some dispositions (a change log: merge by key, deletes
    marked as it marks them): the pipeline asks it at start-up."""

    def check_write(self, spec: WriteSpec) -> None:
        """Raise ConfigError when the pipeline's `spec` would load its records wrongly."""
        ...


@dataclass(frozen=True)
class SourceLag:
    """How far a log source is ahead of what a pipeline has read of it (`LagExtractor`)."""

    bytes: int
    """Log bytes the source keeps for the pipeline (written since its confirmed position)."""
    seconds: float | None
    """Age of the oldest change not yet read (0 when none waits; None when it cannot be told now)."""
    detail: str = ""
    """Where, for people: the slot and its positions."""


@runtime_checkable
class LagExtractor(Protocol):
    """An extractor that reads a log and can tell how far behind it is (`jetl health`, `jetl status`)."""

    async def lag(self, pipeline: str) -> SourceLag:
        """The pipeline's lag behind its source now (raise when the source cannot tell: no slot, no server)."""
        ...


# Optional capabilities of a transformer.


@runtime_checkable
class OutputFieldsTransformer(Protocol):
    """A transformer that can tell the fields it emits before a run, so a pipeline is checked at start-up."""

    def output_fields(self, input_fields: frozenset[str] | None) -> frozenset[str] | None:
        """The fields it emits given the fields it receives (None: unknown)."""
        ...


@runtime_checkable
class OutputSchemaTransformer(Protocol):
    """A transformer that emits the records of one pydantic model."""

    def output_schema(self) -> type[BaseModel]:
        """The model its records validate into."""
        ...


@runtime_checkable
class OutputTypesTransformer(Protocol):
    """A transformer that says which fields it emits already validated, so the transformer stage does not validate
    them against the schema again (`Pipeline.trusted_fields`)."""

    def output_types(self, input_types: dict[str, Any]) -> dict[str, Any]:
        """Of its input's validated fields (name -> `RecordsAdapter.field_types` entry), those it hands on unchanged,
        under their new names, plus those it validates itself."""
        ...


@runtime_checkable
class JsonTransformer(Protocol):
    """A transformer that can take a raw batch's JSON itself (one pydantic pass, no intermediate dicts): the first
    step of the chain uses it."""

    def transform_json(self, data: bytes) -> list[Record] | None:
        """The transformed records of a JSON array, or None when a record fails (the caller then parses the records
        and runs `transform` to say which and why)."""
        ...


@runtime_checkable
class InPlaceTransformer(Protocol):
    """A transformer that can change records it is given instead of copying them, for a caller that owns them."""

    def transform_in_place(self, records: list[Record]) -> list[Record] | None:
        """As `transform`, changing the given dicts; None when a record fails (the records are then half changed,
        and the caller runs `transform` on unchanged ones)."""
        ...


@runtime_checkable
class ArrowTransformer(Protocol):
    """A transformer that can work on a whole batch held as an Arrow table (`jetl.transformers.chain.ArrowPath`).
    Ask with `takes_arrow(transformer)`."""

    @property
    def takes_arrow(self) -> bool:
        """Whether `transform_arrow` can take a batch at all, as configured."""
        ...

    def transform_arrow(self, table: Any) -> Any | None:
        """The transformed table, or None where it is not certain to give what `transform` would."""
        ...


# Optional capabilities of a loader (besides `KeyedLoader` and `LineageLoader` above).


@runtime_checkable
class ArrowLoader(Protocol):
    """A loader that writes a batch given as an Arrow table, validated column by column: batches for it travel as
    Arrow IPC, not JSON."""

    def load_arrow(self, table: Any, ctx: LoadContext) -> int:
        """Write the table's rows (as `Loader.load`); return how many were written."""
        ...


@runtime_checkable
class SchemaCheckingLoader(Protocol):
    """A loader that checks the pipeline's record model at start-up (types it can store, key columns)."""

    def check_schema(self, model: type[BaseModel]) -> None:
        """Raise ConfigError when the loader cannot store records of `model` as configured."""
        ...


@runtime_checkable
class EvolvingLoader(Protocol):
    """A loader whose destination follows `schema_contract="evolve"` (`jetl.evolution`): new columns, wider types,
    columns made nullable, each change recorded as a migration; never a drop or a narrowing."""

    def evolve(self, model: type[BaseModel], evolution: dict[str, str]) -> list[str]:
        """Bring the destination up to `model` (the pipeline's schema evolved by `evolution`) before a batch of it is
        written: idempotent, once across replicas; return the DDL applied (none when it was there already)."""
        ...


@runtime_checkable
class OpenableLoader(Protocol):
    """A loader the loader service binds to its configured destination (the ClickHouse DSN and credentials)."""

    def open(self, dsn: str, settings: Any = None) -> None:
        """Bind to `dsn` unless the loader names its own; `settings` are the service's ClickHouseSettings."""
        ...


@runtime_checkable
class ReachableLoader(Protocol):
    """A loader whose destination the loader service's health check can reach without writing anything."""

    def reach(self) -> None:
        """Raise when the destination cannot be reached (its text may quote credentials: the caller redacts it)."""
        ...


@runtime_checkable
class CountingLoader(Protocol):
    """A loader that counts the rows its destination holds (`jetl` counts, when it keeps no lineage)."""

    def count(self) -> int:
        """Rows in the destination."""
        ...


@runtime_checkable
class MergingLoader(Protocol):
    """A loader that may merge rows by a key of its own, so its row counts are not the rows loaded."""

    @property
    def mode(self) -> Disposition:
        """Is "merge" when it keeps one row per key."""
        ...


# Helpers: a capability and its value, in one question.


def keeps_cursor(extractor: object) -> bool:
    """Whether `extractor` starts each run from the cursor the last completed run left (`IncrementalExtractor`)."""
    return isinstance(extractor, IncrementalExtractor) and bool(extractor.keeps_cursor)


def takes_arrow(transformer: object) -> bool:
    """Whether `transformer` can work on the batch as an Arrow table, as configured (`ArrowTransformer`)."""
    return isinstance(transformer, ArrowTransformer) and transformer.takes_arrow is True


def declares_fields(transformer: object) -> bool:
    """Whether `transformer` can tell its output fields before a run (`OutputFieldsTransformer` or
    `OutputSchemaTransformer`); a step that cannot (a lambda) is opaque."""
    return isinstance(transformer, (OutputFieldsTransformer, OutputSchemaTransformer))


def fields_out(transformer: object, input_fields: frozenset[str] | None) -> frozenset[str] | None:
    """The fields `transformer` emits given `input_fields`, when it can tell (None: unknown before a run)."""
    if isinstance(transformer, OutputFieldsTransformer):
        return transformer.output_fields(input_fields)
    if isinstance(transformer, OutputSchemaTransformer):
        model = transformer.output_schema()
        if isinstance(model, type) and issubclass(model, BaseModel):
            return frozenset(model.model_fields)
    return None
