"""Lifecycle events: the event log on JETL_EVENTS. Run state is folded from these, never stored beside them."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from jetl.messages.ids import BatchId, Token, part_id
from jetl.messages.models import Trigger, utcnow
from jetl.subjects import STAGE_ROLE, Role, event_role


def instance_id() -> str:
    """This process, as events name it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Event(BaseModel):
    # checked on receipt: the tracker keys run state by them, and a forged event must not name a path or a wildcard
    pipeline: Token
    run_id: Token
    at: datetime = Field(default_factory=utcnow)
    service: str = ""
    instance: str = Field(default_factory=instance_id)
    code_hash: str = ""

    def msg_id(self) -> str:
        """Dedup id: one event of a type per run (and batch), however often a step is redelivered."""
        return f"{self.run_id}/{getattr(self, 'type', '')}"


class _BatchEvent(_Event):
    batch_id: BatchId
    seq: int = Field(ge=0)
    part: int = Field(default=0, ge=0)
    """The part of the batch the event is about, when its clean batch travels in several messages (`Batch.part`)."""
    parts: int = Field(default=1, ge=1)
    """How many parts the batch's clean batch travels in (1: one message)."""

    def model_post_init(self, __context: Any) -> None:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of a batch in {self.parts} part(s)")

    def msg_id(self) -> str:
        # a batch in parts has one event of a type per part (each part is loaded or rejected on its own)
        return f"{part_id(self.batch_id, self.part, self.parts)}/{getattr(self, 'type', '')}"


class RunRequested(_Event):
    """A run was asked for (by a person, the schedule, a backfill or a replay)."""

    type: Literal["run.requested"] = "run.requested"
    trigger: Trigger = "manual"
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    parent_run_id: Token | None = None
    shadow: bool = False
    """A replay loading into the destination's shadow (`jetl replay --diff`), not the real destination."""
    redrive: list[int] = Field(default_factory=list)
    """A redrive: the JETL_DLQ sequences it sends back through (so a later redrive does not send them again)."""


class RunStarted(_Event):
    """The extractor took the run."""

    type: Literal["run.started"] = "run.started"
    cursor: dict[str, Any] | None = None
    """The cursor the run starts from (the one the last completed run, or an operator, left); None: from the start."""


class BatchExtracted(_BatchEvent):
    """A raw batch is durably on JETL_RAW."""

    type: Literal["batch.extracted"] = "batch.extracted"
    records: int
    rejected: int = 0


class RunExtracted(_Event):
    """The extractor finished: the run has exactly `batches` batches."""

    type: Literal["run.extracted"] = "run.extracted"
    batches: int = Field(ge=0)
    records: int = Field(ge=0)
    rejected: int = Field(default=0, ge=0)
    cursor: dict[str, Any] | None = None
    """The incremental state to carry into the next run, once this one completes."""


class RunPartitioned(_Event):
    """The extractor that took the run split its input into `partitions` partitions, for replicas to share; the run
    is extracted once each has its partition.extracted (no run.extracted follows)."""

    type: Literal["run.partitioned"] = "run.partitioned"
    partitions: int
    cursor: dict[str, Any] | None = None
    """The incremental state to carry into the next run once this one completes: fixed when planning, since the
    run completes only when every partition did (an extractor that cannot say it then is not partitioned)."""


class PartitionExtracted(_Event):
    """One partition of a partitioned run is extracted: it has exactly `batches` batches."""

    type: Literal["partition.extracted"] = "partition.extracted"
    partition: str
    batches: int
    records: int
    rejected: int = 0

    def msg_id(self) -> str:
        return f"{self.run_id}/{self.partition}/{self.type}"


class BatchTransformed(_BatchEvent):
    """A clean batch is durably on JETL_CLEAN (in `parts` messages when it was too large for one)."""

    type: Literal["batch.transformed"] = "batch.transformed"
    records_in: int
    records_out: int
    rejected: int = 0
    filtered: int = 0

    def msg_id(self) -> str:
        return f"{self.batch_id}/{self.type}"  # one per batch, however many parts it was published in


class BatchLoaded(_BatchEvent):
    """A batch is written to the destination."""

    type: Literal["batch.loaded"] = "batch.loaded"
    records: int
    destination: str = ""


class BatchRejected(_BatchEvent):
    """A whole batch, or records of it, went to the DLQ at a stage."""

    type: Literal["batch.rejected"] = "batch.rejected"
    stage: Literal["extract", "transform", "load"]
    records: int
    reason: str
    scope: Literal["records", "batch"] = "records"
    """`records`: some records were dead-lettered and the batch went on; `batch`: the whole batch stopped here."""

    def msg_id(self) -> str:
        return f"{part_id(self.batch_id, self.part, self.parts)}/{self.type}/{self.stage}/{self.scope}"


class DriftField(BaseModel):
    """One way a batch's records differ from the pipeline's input model (`jetl.transformers.drift`)."""

    kind: Literal["new", "missing", "changed"]
    """new: a field the model does not know; missing: one it expects that records lack; changed: a value of a JSON
    type the field does not take as it is (an int field given 1.5)."""
    path: str
    """The field's path in the record, nested fields joined by dots."""
    expected: str = ""
    """The model's type of the field ("" for a new field)."""
    seen: str = ""
    """The JSON type the records hold ("" for a missing field)."""
    count: int = Field(ge=0)
    """Records of the batch (of those looked at) showing it."""
    example: str = ""
    """A value seen, as JSON, cut short."""


class SchemaDrift(_BatchEvent):
    """A raw batch's records differ from the pipeline's input model: the transformer says how (`fields`). Counted in
    no ledger: the batch's own events say what became of its records."""

    type: Literal["schema.drift"] = "schema.drift"
    fields: list[DriftField]
    looked_at: int = Field(ge=0)
    """Records of the batch the fields were counted over (the first and last of a clean batch, every record of one
    that had rejects)."""
    discarded_rows: int = Field(default=0, ge=0)
    """Records its pipeline's schema contract dropped ("discard_row"): the batch's ledger counts them filtered."""
    discarded_values: int = Field(default=0, ge=0)
    """Values its pipeline's schema contract dropped from records it kept ("discard_value")."""


class SchemaEvolved(_BatchEvent):
    """The loader changed the destination's table for an evolved batch (`schema_contract="evolve"`,
    `jetl.evolution`): what evolve made of the fields, and the DDL applied, recorded as a migration in the
    destination's `jetl_migrations`. Published by the replica that applied it (the others found nothing to do);
    counted in no ledger."""

    type: Literal["schema.evolved"] = "schema.evolved"
    evolution: dict[str, str]
    """Per field, what evolve made of it: its column's new type, or `nullable`."""
    statements: list[str]
    """The DDL applied, in order."""
    destination: str = ""


class RunCompleted(_Event):
    """Every batch of the run is accounted for."""

    type: Literal["run.completed"] = "run.completed"
    extracted: int
    loaded: int
    rejected: int
    filtered: int
    cursor: dict[str, Any] | None = None
    """The cursor the pipeline moves to with this run (the next run starts from it); None: it keeps none."""


class RunFailed(_Event):
    """The run cannot finish."""

    type: Literal["run.failed"] = "run.failed"
    error: str
    stage: str = ""


class RunCancelled(_Event):
    """Someone ended the run by hand (`jetl runs cancel`): it counts as failed, and no longer holds back later runs
    of its pipeline (the overlap guard of a pipeline that keeps a cursor)."""

    type: Literal["run.cancelled"] = "run.cancelled"
    reason: str
    by: str = ""
    """Who cancelled it (the CLI user), as they gave it."""


class CursorChanged(_Event):
    """An operator set or reset a pipeline's cursor (`jetl cursor`): the one change of a cursor that is not a run.

    Its `run_id` names the change (`cursor-<UTC stamp>`), not a run: nothing folds it into run state; the cursor
    store and `jetl status --rebuild` take it in log order with the cursors completed runs moved to.
    """

    type: Literal["cursor.changed"] = "cursor.changed"
    action: Literal["set", "reset"]
    cursor: dict[str, Any] | None
    """The pipeline's whole cursor after the change (None: reset, the next run starts from the beginning)."""
    previous: dict[str, Any] | None = None
    """The cursor before the change."""
    by: str
    """Who changed it (`--by`, default the OS user)."""
    reason: str
    """Why (`--reason`, required)."""


OPS_RUN = "ops"
"""The run-id token of events that belong to no run (someone paused a pipeline): `jetl.events.<pipeline>.ops`."""


class OperatorAction(_Event):
    """Someone changed something by hand (the dashboard's buttons): who did what to which pipeline.

    It belongs to no run (its run_id is `OPS_RUN`), so nothing folds it into a run state; the run it made, if any,
    is `target_run_id`, and that run's own events follow as usual.
    """

    type: Literal["operator.action"] = "operator.action"
    run_id: str = OPS_RUN
    action: Literal["pause", "resume", "run", "backfill", "redrive"]
    by: str
    """Who: `ui:<os user of the server>@<client address>`."""
    target_run_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    def msg_id(self) -> str:
        # every action is its own event: two people pausing twice are four events
        return f"{self.pipeline}/{self.type}/{self.action}/{self.at.isoformat()}/{self.instance}"


def is_run_event(ev: _Event) -> bool:
    """An event of a run, to fold into its state (an operator action or a cursor change is not)."""
    return not isinstance(ev, (OperatorAction, CursorChanged))


Event = Annotated[
    RunRequested
    | RunStarted
    | BatchExtracted
    | RunExtracted
    | RunPartitioned
    | PartitionExtracted
    | BatchTransformed
    | BatchLoaded
    | BatchRejected
    | SchemaDrift
    | SchemaEvolved
    | RunCompleted
    | RunFailed
    | RunCancelled
    | CursorChanged
    | OperatorAction,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: bytes) -> Event:
    """Decode one event from its JSON."""
    return EVENT_ADAPTER.validate_json(data)


_FROM: dict[str, frozenset[Role]] = {
    "run.requested": frozenset({"scheduler", "operator"}),
    "run.started": frozenset({"extractor"}),
    "batch.extracted": frozenset({"extractor"}),
    "run.extracted": frozenset({"extractor"}),
    "run.partitioned": frozenset({"extractor"}),
    "partition.extracted": frozenset({"extractor"}),
    "batch.transformed": frozenset({"transformer"}),
    "batch.loaded": frozenset({"loader"}),
    "schema.drift": frozenset({"transformer"}),
    "schema.evolved": frozenset({"loader"}),
    "run.completed": frozenset({"scheduler"}),
    # a stage fails its run; the watchdog a run whose batch no stage could finish; an operator by hand
    "run.failed": frozenset({"extractor", "transformer", "loader", "scheduler", "operator"}),
    "run.cancelled": frozenset({"operator"}),
    "cursor.changed": frozenset({"operator"}),
    "operator.action": frozenset({"operator"}),
}
"""The roles each event type is trusted from: whose work it reports. A run exists only once the scheduler or an
operator requested it; only the tracker (in the scheduler) completes one."""


def trusted(ev: Event, role: str | None) -> bool:
    """Whether `ev`, published on a subject of `role` (`jetl.subjects.event_role`), may be believed: the role is one
    whose work the event reports (a batch.rejected's role is its stage's, or the watchdog's)."""
    if isinstance(ev, BatchRejected):
        return role in (STAGE_ROLE[ev.stage], "scheduler")
    return role in _FROM.get(ev.type, frozenset())


def read_event(subject: str, data: bytes) -> Event | None:
    """The event a JETL_EVENTS message holds, None when its subject's role may not say it (a forgery, or an event
    of an older layout without a role token): readers that fold events skip those."""
    ev = parse_event(data)
    return ev if trusted(ev, event_role(subject)) else None
