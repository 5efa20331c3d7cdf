"""Run state folded from the event log. Nothing here is a source of truth: `fold` over JETL_EVENTS rebuilds it."""

from __future__ import annotations

from typing import Any

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
    SchemaEvolved,
)
from jetl.messages.ids import split_batch_id
from jetl.runstate import BatchState, RunState, Status, Tally

__all__ = [
    "BATCH_EVENTS",
    "DRIFT_KEPT",
    "BatchState",
    "RunState",
    "Status",
    "Tally",
    "expected_rows",
    "fold",
    "fold_batch",
    "fold_run",
]


BATCH_EVENTS = (BatchExtracted, BatchTransformed, BatchLoaded, BatchRejected)
"""The events that change one batch's ledger (each names its batch)."""


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
        case SchemaEvolved():
            for field, evolution in ev.evolution.items():
                seen = f"{field} {evolution}"
                if seen not in state.evolved and len(state.evolved) < DRIFT_KEPT:
                    state.evolved = sorted([*state.evolved, seen])
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
