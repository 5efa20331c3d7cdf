"""Run state folded from the event log. Nothing here is a source of truth: `fold` over JETL_EVENTS rebuilds it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from jetl.events import (
    BatchExtracted,
    BatchLoaded,
    BatchRejected,
    BatchTransformed,
    Event,
    PartitionExtracted,
    RunCancelled,
    RunCompleted,
    RunExtracted,
    RunFailed,
    RunPartitioned,
    RunRequested,
    RunStarted,
    SchemaDrift,
)
from jetl.messages.ids import split_batch_id

Status = Literal["requested", "running", "completed", "failed"]


class BatchState(BaseModel):
    """One batch's ledger (kept under its own KV key, `batch.<pipeline>.<run>.<batch>`)."""

    seq: int
    extracted: int = 0
    extract_rejected: int = 0
    transformed: int = 0
    rejected: int = 0
    """Records dead-lettered by the transformer (one by one, or the whole raw batch)."""
    load_rejected: int = 0
    """Records of the clean batch the destination refused. Kept apart from `rejected`: the loader's verdict may be
    folded before the transformer's own event (it publishes the batch, then its event), and must not be lost."""
    filtered: int = 0
    loaded: int = 0
    outcome: Literal["pending", "loaded", "rejected"] = "pending"
    rejected_stage: str | None = None
    parts: int = 1
    """How many messages its clean batch travels in (a batch too large for one is cut by the transformer)."""
    part_counts: dict[int, list[int]] | None = None
    """Only for a batch in parts: per part that reached the destination or the DLQ, [loaded, load_rejected];
    `loaded` and `load_rejected` are their sums, and the batch is settled once every part is here."""
    v: int = 0
    """Times it changed: a write of an older version never replaces a newer one."""


class Tally(BaseModel):
    """A run's ledger totals, summed over its batches: the run state keeps these, not the batches (O(1) per run)."""

    extracted: int = 0
    extract_rejected: int = 0
    transformed: int = 0
    rejected: int = 0
    load_rejected: int = 0
    filtered: int = 0
    loaded: int = 0
    batches: int = 0
    """Batches any event has named."""
    settled: int = 0
    """Batches that reached the destination or the DLQ."""

    def add(self, old: BatchState | None, new: BatchState) -> None:
        """Count `new` instead of `old` (the same batch before and after one event)."""
        # the tracker's per-event arithmetic: straight into the fields (plain ints), past pydantic's __setattr__,
        # which cost most of the time of a million-batch fold
        d = self.__dict__
        for name in _COUNTED:
            d[name] += getattr(new, name) - (getattr(old, name) if old is not None else 0)
        d["batches"] += old is None
        d["settled"] += (new.outcome != "pending") - (old is not None and old.outcome != "pending")


_COUNTED = ("extracted", "extract_rejected", "transformed", "rejected", "load_rejected", "filtered", "loaded")


BATCH_EVENTS = (BatchExtracted, BatchTransformed, BatchLoaded, BatchRejected)
"""The events that change one batch's ledger (each names its batch)."""


class RunState(BaseModel):
    """One run as the log tells it: O(1) in size, whatever the number of batches (their ledgers are kept apart)."""

    pipeline: str
    run_id: str
    status: Status = "requested"
    trigger: str = "manual"
    parent_run_id: str | None = None
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expected_batches: int | None = None
    extracted_claimed: int | None = None
    """Records (read and unreadable) run.extracted says the run extracted: the batches must add up to it."""
    last_event_at: datetime | None = None
    """When the run last made progress (its newest event): a run silent for too long is failed as stalled."""
    cancelled: bool = False
    """Ended by `jetl runs cancel` (its status is `failed`, its error the reason)."""
    cursor: dict[str, Any] | None = None
    """The cursor the run moves to once it completes (from run.extracted)."""
    start_cursor: dict[str, Any] | None = None
    """The cursor the run started from (from run.started)."""
    code_hash: str = ""
    error: str | None = None
    load_error: str | None = None
    """Why the destination refused the first batch it refused (its batch.rejected at the load stage), if any did."""
    tally: Tally = Field(default_factory=Tally)
    """The totals over every batch the run's events named."""
    pending: dict[str, BatchState] = Field(default_factory=dict)
    """Batch ledgers counted in `tally` whose own key is not written yet (`jetl.state.apply`): as many as events in
    flight, empty between them. A delivery that stopped half way finds its batch here and finishes the write."""
    events: int = 0
    shadow: bool = False
    """A replay into the destination's shadow: its rows are not in the real destination."""
    redrive: list[int] = Field(default_factory=list)
    """The JETL_DLQ sequences this run redrives."""
    partitions: int | None = None
    """How many partitions a partitioned run's extraction has (from run.partitioned); None: not partitioned."""
    summary: int = 0
    """How many summary keys hold this finished run's batch ledgers (`jetl.state.compact`); 0: they are in their own
    keys."""
    partition_batches: dict[str, int] = Field(default_factory=dict)
    """Per partition that reported (partition.extracted), its batch count: the run's expected batches are their
    total once every partition has reported."""
    drift: list[str] = Field(default_factory=list)
    """The schema drift its batches showed (schema.drift), one `kind path` each ("new extra", "changed price:
    float", "missing sku"), at most `DRIFT_KEPT`: `jetl schema diff` has the counts and examples."""
    _batches: dict[str, BatchState] = PrivateAttr(default_factory=dict)

    @property
    def batches(self) -> dict[str, BatchState]:
        """Batch ledgers by batch id, where they were folded in memory or loaded (`jetl.state.load_batches`); a
        state read from KV alone has none (its totals are in `tally`)."""
        return self._batches

    @property
    def extracted(self) -> int:
        """Everything the extractor read, good or malformed."""
        return self.tally.extracted + self.tally.extract_rejected

    @property
    def loaded(self) -> int:
        """Rows written to the destination."""
        return self.tally.loaded

    @property
    def rejected(self) -> int:
        """Records dead-lettered at any stage."""
        return self.tally.extract_rejected + self.tally.rejected + self.tally.load_rejected

    @property
    def filtered(self) -> int:
        """Records a transformer dropped on purpose (negative when one fanned out)."""
        return self.tally.filtered

    @property
    def reconciles(self) -> bool:
        """extracted = loaded + rejected + filtered, over every batch the run announced, each of them settled, and as
        many batches and records as run.extracted counted. A batch lost on the way, or one still in flight, makes the
        ledger not reconcile: equal sums over what arrived are not enough (a lost batch is in neither side)."""
        if self.tally.settled != self.tally.batches:  # a batch still in flight
            return False
        if self.expected_batches is not None and self.tally.batches < self.expected_batches:  # a batch never seen
            return False
        if self.extracted_claimed is not None and self.extracted_claimed != self.extracted:
            return False
        return self.extracted == self.loaded + self.rejected + self.filtered

    @property
    def settled_batches(self) -> int:
        """Batches that reached the destination or the DLQ."""
        return self.tally.settled

    @property
    def settled(self) -> bool:
        """Every batch of a fully extracted run has reached the destination or the DLQ."""
        return (
            self.expected_batches is not None
            and self.tally.batches >= self.expected_batches
            and self.tally.settled == self.tally.batches
        )

    def refused_by_destination(self) -> str | None:
        """Why a settled run fails rather than completes: the destination refused every record that reached it (none
        loaded, some dead-lettered by the loader: a table whose schema changed, a destination that stayed away). A run
        that loaded nothing of what it extracted because the destination said no has not completed, and must not move
        its cursor past that input. None: the run completes (with its dead letters, if some records were refused)."""
        if self.tally.loaded or not self.tally.load_rejected:
            return None
        why = f": {self.load_error}" if self.load_error else ""
        return (
            f"the destination refused every record that reached it ({self.tally.load_rejected} dead-lettered by the "
            f"loader, none loaded; `jetl dlq` has them, `jetl dlq redrive` once it is mended){why}"
        )

    def counts(self) -> dict[str, int]:
        """The ledger totals."""
        return {
            "extracted": self.extracted,
            "loaded": self.loaded,
            "rejected": self.rejected,
            "filtered": self.filtered,
            "batches": self.tally.batches,
        }


def fold_batch(old: BatchState | None, ev: Event) -> BatchState:
    """One batch's ledger after one of its events (a new value; `old` is left alone). Idempotent per event: a
    redelivered event gives back an equal value, version included."""
    b = BatchState(seq=getattr(ev, "seq", 0)) if old is None else old.model_copy()
    match ev:
        case BatchExtracted():
            b.extracted, b.extract_rejected = ev.records, ev.rejected
        case BatchTransformed():
            b.transformed, b.rejected, b.filtered = ev.records_out, ev.rejected, ev.filtered
            b.parts = max(b.parts, ev.parts)
        case BatchLoaded() if ev.parts > 1:
            _fold_part(b, ev, ev.records, 0)
        case BatchLoaded():
            b.loaded, b.outcome = ev.records, "loaded"
        case BatchRejected() if ev.parts > 1 and ev.stage == "load" and ev.scope == "batch":
            _fold_part(b, ev, 0, ev.records)
        case BatchRejected():
            if ev.scope == "records":
                if ev.stage == "extract":  # also counted by batch.extracted; the same value either way
                    b.extract_rejected = ev.records
                # transform-stage record rejects are counted by batch.transformed
            elif b.outcome != "rejected":
                if ev.stage == "load":  # the clean batch failed: transform-stage rejects stay counted
                    b.load_rejected = ev.records
                else:  # the whole raw batch failed to transform
                    b.rejected, b.filtered = ev.records, 0
                b.outcome, b.rejected_stage = "rejected", ev.stage
    if old is None or _ledger(b) != _ledger(old):
        b.v = (old.v if old is not None else 0) + 1
    return b


def _fold_part(b: BatchState, ev: BatchLoaded | BatchRejected, loaded: int, rejected: int) -> None:
    """Count one part of a batch in parts as loaded or rejected: the batch's counts are the sums over its parts, and
    it settles when every part has (in whatever order the parts, and the transformer's own event, fold)."""
    b.parts = max(b.parts, ev.parts)
    counts = dict(b.part_counts or {})
    was = counts.get(ev.part, [0, 0])
    counts[ev.part] = [max(was[0], loaded), max(was[1], rejected)]  # a redelivery sets the same values again
    b.part_counts = counts
    b.loaded = sum(c[0] for c in counts.values())
    b.load_rejected = sum(c[1] for c in counts.values())
    if b.outcome == "rejected" and b.rejected_stage != "load":  # the whole raw batch stopped before loading
        return
    if len(counts) < b.parts:
        b.outcome, b.rejected_stage = "pending", None
    elif any(c[1] for c in counts.values()):
        b.outcome, b.rejected_stage = "rejected", "load"
    else:
        b.outcome = "loaded"


def _ledger(b: BatchState) -> tuple[Any, ...]:
    """What a batch's version counts changes of (every field but the version itself)."""
    return (
        b.extracted,
        b.extract_rejected,
        b.transformed,
        b.rejected,
        b.load_rejected,
        b.filtered,
        b.loaded,
        b.outcome,
        b.rejected_stage,
        b.parts,
        b.part_counts,
    )


def _partitions_extracted(state: RunState) -> None:
    """A partitioned run is extracted when every partition has reported (in whichever order the events fold)."""
    if state.partitions is not None and len(state.partition_batches) >= state.partitions:
        state.expected_batches = sum(state.partition_batches.values())


DRIFT_KEPT = 20
"""How many drifted fields a run state names (it stays O(1) in size)."""


def fold_run(state: RunState | None, ev: Event) -> RunState:
    """Apply the run-level part of one event (a batch event only counts as seen: its ledger is `fold_batch`'s)."""
    if state is None:
        state = RunState(pipeline=ev.pipeline, run_id=ev.run_id)
    state.events += 1
    if state.last_event_at is None or ev.at > state.last_event_at:
        state.last_event_at = ev.at
    if ev.code_hash:
        state.code_hash = ev.code_hash
    match ev:
        case RunRequested():
            state.trigger = ev.trigger
            state.parent_run_id = ev.parent_run_id
            state.data_interval_start = ev.data_interval_start
            state.data_interval_end = ev.data_interval_end
            state.requested_at = ev.at
            state.shadow = ev.shadow
            state.redrive = list(ev.redrive)
        case RunStarted():
            if state.status == "requested":
                state.status = "running"
            state.started_at = state.started_at or ev.at
            state.start_cursor = ev.cursor
        case RunExtracted():
            state.expected_batches = ev.batches
            state.extracted_claimed = ev.records + ev.rejected
            state.cursor = ev.cursor
            if state.status == "requested":
                state.status = "running"
        case RunPartitioned():
            state.partitions = ev.partitions
            state.cursor = ev.cursor
            if state.status == "requested":
                state.status = "running"
            _partitions_extracted(state)
        case PartitionExtracted():
            state.partition_batches[ev.partition] = ev.batches
            _partitions_extracted(state)
        case RunCompleted():
            # the tracker completes only a run it has not folded a cancel (or failure) of: one that reached the log
            # before run.completed came too late for it, and was refused (`JetlClient.cancel`)
            state.status, state.cancelled, state.error = "completed", False, None
            state.finished_at = ev.at
            if ev.cursor is not None:
                state.cursor = ev.cursor
        case RunFailed():
            # the reason a person gave stands over what failed after it; a completed run has loaded everything and
            # moved its cursor, and a late (or forged) failure changes none of that
            if not state.cancelled and state.status != "completed":
                state.status = "failed"
                state.error = ev.error
                state.finished_at = ev.at
        case BatchRejected() if ev.stage == "load" and state.load_error is None:
            state.load_error = ev.reason[:500]
        case SchemaDrift():
            for f in ev.fields:
                seen = f"{f.kind} {f.path}" + (f": {f.seen}" if f.kind == "changed" else "")
                if seen not in state.drift and len(state.drift) < DRIFT_KEPT:
                    state.drift = sorted([*state.drift, seen])
        case RunCancelled():
            if state.status != "completed":
                state.status, state.cancelled = "failed", True
                state.error = f"cancelled{f' by {ev.by}' if ev.by else ''}: {ev.reason}"
                state.finished_at = ev.at
    return state


def fold(state: RunState | None, ev: Event) -> RunState:
    """Apply one event in memory, batch ledgers kept on the state (`RunState.batches`). Idempotent per event: a
    redelivered event sets the same values again. The tracker's fold into KV is `jetl.state.apply`."""
    state = fold_run(state, ev)
    if isinstance(ev, BATCH_EVENTS):
        old = state.batches.get(ev.batch_id)
        new = fold_batch(old, ev)
        state.tally.add(old, new)
        state.batches[ev.batch_id] = new
    return state


def expected_rows(runs: list[RunState]) -> dict[str, int]:
    """Per run, the rows it should still have in the real destination, by the ledger alone.

    A run's loaded batches count, except shadow runs (their rows went to a side table) and batches a replay has
    superseded: batch k of a replay that reached the destination replaced batch k of its parent.
    A run's own batches are needed only when a replay superseded some (`jetl.state.list_runs` loads them then).
    """
    superseded: dict[str, set[str]] = {}
    for r in runs:
        if r.trigger == "replay" and r.parent_run_id and not r.shadow:
            done = {split_batch_id(i)[1] for i, b in r.batches.items() if b.outcome == "loaded"}
            superseded.setdefault(r.parent_run_id, set()).update(done)
    out: dict[str, int] = {}
    for r in runs:
        gone = superseded.get(r.run_id, set())
        # the totals, less what a replay replaced: only runs a replay superseded need their batches
        replaced = sum(b.loaded for i, b in r.batches.items() if split_batch_id(i)[1] in gone) if gone else 0
        out[r.run_id] = 0 if r.shadow else r.loaded - replaced
    return out
