"""A run's folded state as the state bucket keeps it: `RunState` (totals, O(1) in size), its `Tally` and the
per-batch `BatchState`. The models alone, without the events they are folded from (`jetl.projection` folds them), so
a reader of the bucket does not import every event model (`jetl status` reads `jetl.runsummary`'s summaries, which
share `Ledger`'s arithmetic over the totals).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from jetl.runsummary import Ledger
from jetl.runsummary import Status as Status


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


class RunState(Ledger, BaseModel):
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
    evolved: list[str] = Field(default_factory=list)
    """What `schema_contract="evolve"` changed in the destination for its batches (schema.evolved), one `field
    evolution` each ("color text", "qty float", "name nullable"), at most `DRIFT_KEPT`."""
    _batches: dict[str, BatchState] = PrivateAttr(default_factory=dict)

    @property
    def batches(self) -> dict[str, BatchState]:
        """Batch ledgers by batch id, where they were folded in memory or loaded (`jetl.state.load_batches`); a
        state read from KV alone has none (its totals are in `tally`)."""
        return self._batches

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
