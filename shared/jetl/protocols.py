"""The three plugin contracts. Built-in connectors implement them; so can yours (see `jetl.testing`)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

Record = dict[str, Any]


@dataclass
class Chunk:
    """A bounded slice of extracted records, with where each came from when known."""

    records: list[Record]
    origins: list[str] | None = None
    position: dict[str, Any] | None = None
    """Where the extractor stands after this chunk (file and line, page, high-water mark)."""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """Input the extractor could not read at all: (origin, reason). Goes to the DLQ, never dropped."""
    raw: list[bytes] | None = None
    """The records as JSON texts not yet parsed, one object each on one line, given instead of `records` when
    `ExtractContext.raw_json` asks for them. They travel as they are; the transformer parses them together with
    validating them (one pydantic pass over the batch), and rejects a text that is not one JSON object, with its
    origin. A JSONL file read this way costs its extractor 0.4 us a line instead of 1.9 (bench/README.md)."""
    origin_runs: list[tuple[str, int, int]] | None = None
    """`origins` as runs of (prefix, first, count): `("f.jsonl:", 1, 3)` is f.jsonl:1, :2 and :3 (`Batch.origin_runs`).
    An extractor that numbers its records gives these instead of a string per record."""

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

    # Optional, for partitioned extraction (replicas share one run): `partitions(ctx) -> list[Partition]`, the run's
    # input split into shares (an empty list: nothing to read; one: not worth splitting; None: this extractor is
    # not partitioned as configured, as if it had no `partitions`), and
    # `extract_partition(ctx, partition) -> AsyncIterator[Chunk]`, the records of one of them, the same every time.
    # After `partitions`, `next_cursor()` is the cursor the run reaches once every partition is extracted; an
    # extractor that cannot know it before extracting must not partition (raise ConfigError when asked to).
    # Without these an extractor is one partition.
    # Optional: `keeps_cursor: bool`, True when each run starts from the cursor the last completed run left (files
    # already loaded, a high-water mark). Runs of a pipeline with such an extractor never overlap
    # (`Pipeline.keeps_cursor`): a second one would read what the first is still loading.
    # Optional, for `jetl cursor set` (`jetl.ops.cursors`): `cursor_field` and `cursor_tie_breaker` (str | None), the
    # record fields the cursor follows, and `cursor_at(value, key=None) -> dict`, the cursor of the position
    # strictly after (value, key).


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
