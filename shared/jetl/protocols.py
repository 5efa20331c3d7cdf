"""The three plugin contracts. Built-in connectors implement them; so can yours (see `jetl.testing`)."""

from __future__ import annotations

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

    @property
    def dedup_token(self) -> str:
        """What a write of these records is deduplicated on: writing the same token twice leaves one copy."""
        return self.part_id or self.batch_id


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
