"""The messages that travel between services, as models: run requests, batch envelopes and partitions of a run
(dead letters: `jetl.messages.deadletter`; how they travel as bytes: `jetl.messages.wire`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from jetl.errors import ConfigError
from jetl.messages.ids import BatchId, Token, batch_id, part_id
from jetl.subjects import check_token

Encoding = Literal["json", "arrow"]
Evolution = Literal["bigint", "float", "decimal", "text", "bool", "nullable"]
"""What schema evolution makes of one field (`jetl.evolution`): its column's new type, or `nullable` (its type as it
was, made optional)."""
Trigger = Literal["manual", "schedule", "backfill", "replay", "redrive"]


def utcnow() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(UTC)


class RunRequest(BaseModel):
    """Ask the extractor to run one pipeline once, for one data interval."""

    pipeline: str
    run_id: str
    trigger: Trigger = "manual"
    requested_at: datetime = Field(default_factory=utcnow)
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    parent_run_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    force: bool = False
    replay_of: str | None = None
    """Replay: re-publish that run's raw batches (kept on JETL_RAW) under this run id instead of extracting."""
    shadow: bool = False
    """Load into the destination's shadow (a side table or folder per run), never the real one (`replay --diff`)."""
    redrive: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    """Redrive: the JETL_DLQ stream sequences whose records this run sends back through, instead of extracting."""

    def model_post_init(self, __context: Any) -> None:
        check_token(self.pipeline, "pipeline")
        check_token(self.run_id, "run id")
        if self.replay_of is not None:
            check_token(self.replay_of, "replayed run id")
        if self.parent_run_id is not None:
            check_token(self.parent_run_id, "parent run id")
        if self.replay_of is not None and self.redrive:
            raise ConfigError("a run replays a run or redrives dead letters, not both")
        if self.shadow and self.replay_of is None:
            raise ConfigError("shadow loading is for replays (it is diffed against the replayed run)")


class Batch(BaseModel):
    """Envelope of one batch of records: who made it, from where, under which schema.

    Its ids are checked on receipt (`decode_batch`): they name subjects, folders and tables downstream.
    """

    pipeline: Token
    run_id: Token
    seq: int = Field(ge=0)
    schema_name: str
    schema_hash: str
    count: int
    encoding: Encoding = "json"
    created_at: datetime = Field(default_factory=utcnow)
    source_position: dict[str, Any] | None = None
    origins: list[str] | None = None
    """Per record, where it came from (`file:line`), when the extractor knows."""
    origin_runs: list[tuple[str, int, int]] | None = None
    """`origins` as they travel when they compress: runs of (prefix, first number, count), i.e. prefix + number."""
    shadow: bool = False
    """Load into the destination's shadow for this run (a replay with --diff), never the real destination."""
    supersedes: BatchId | None = None
    """A replayed batch: the parent run's batch it replaces in the destination (whose rows the loader removes)."""
    partition: str | None = None
    """The partition of the run that made it (a subject token), when the run's extraction was partitioned; `seq`
    then counts within that partition."""
    part: int = Field(default=0, ge=0)
    """Which part of its batch this message carries, when a clean batch was too large for one message and travels
    in `parts` messages (cut in order by the transformer); its records are `count` of the batch's."""
    parts: int = Field(default=1, ge=1)
    """How many messages the batch travels in (1: the whole batch in this one)."""
    transformed: bool = False
    """A raw batch of records that passed the transformers once and that the loader rejected, sent back by a
    redrive: the transformer checks them against the schema and passes them on without transforming them again,
    and only in a run that the run state knows as a redrive (an operator's or the scheduler's request)."""
    version: int | None = Field(default=None, ge=0)
    """Where the batch's records stand in the source's log: the version of its first record (record i has version +
    i), set by the transformer from the raw batch's JETL_RAW sequence (`jetl.protocols.log_version`). A replay keeps
    its parent's (so it never outranks a later run's rows), a redelivery its own; None: not known (every record 0)."""
    evolved: dict[Token, Evolution] | None = None
    """A clean batch of a pipeline under `schema_contract="evolve"` whose records drifted: per field, what evolve made
    of it (`jetl.evolution`). The loader validates the batch under the evolved model and brings its table up to it
    first; `schema_hash` is the evolved model's."""

    def model_post_init(self, __context: Any) -> None:
        if self.partition is not None:
            check_token(self.partition, "partition")
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of a batch in {self.parts} part(s)")

    @property
    def batch_id(self) -> str:
        """Deterministic: re-extracting after a crash yields the same ids, so publishes dedup."""
        return batch_id(self.run_id, self.seq, self.partition)

    @property
    def part_id(self) -> str:
        """The id of this message's records: its `Nats-Msg-Id` and the destination's dedup token (`part_id`)."""
        return part_id(self.batch_id, self.part, self.parts)

    def origin(self, index: int) -> str | None:
        """Where record `index` of this batch came from."""
        if self.origins is not None and 0 <= index < len(self.origins):
            return self.origins[index]
        if self.origin_runs is not None and index >= 0:
            for prefix, first, count in self.origin_runs:
                if index < count:
                    return f"{prefix}{first + index}"
                index -= count
        return None


class PartitionWork(BaseModel):
    """One partition of a run's extraction, published by the extractor that planned the run to
    `jetl.run.<pipeline>.<run>.<partition>`, for any extractor replica to take (the same durable as run requests).

    Extracting it again (a crash, a redelivery) makes the same batches with the same ids: the planner fixed what the
    partition covers (`spec`), and the cursor every partition starts from.
    """

    kind: Literal["partition"] = "partition"
    request: RunRequest
    partition: str
    """The run's partition token (`p0000`, ...): in its subject and its batch ids."""
    extractor: int
    """Which of the pipeline's extractors reads it (its index)."""
    spec: dict[str, Any] = Field(default_factory=dict)
    """What the extractor's `partitions()` said this partition covers (a file, a byte range, a key range, ...)."""
    partitions: int
    """How many partitions the run has in all."""
    cursor: dict[str, Any] | None = None
    """The cursor the run started from (every partition reads from the same one)."""

    def model_post_init(self, __context: Any) -> None:
        check_token(self.partition, "partition")
        if not self.extractor >= 0 or self.partitions < 1:
            raise ConfigError("a partition names an extractor index >= 0 of a run of at least one partition")

    @property
    def msg_id(self) -> str:
        """Dedup id on JETL_RUNS: a planner that plans again publishes no second copy."""
        return f"partition/{self.request.run_id}/{self.partition}"
