"""The tracker trusts a run's state only as far as the log backs it, and never moves a cursor back."""

from __future__ import annotations

from functools import reduce
from typing import Any

from jetl import subjects
from jetl.events import (
    BatchExtracted,
    BatchLoaded,
    BatchRejected,
    RunCancelled,
    RunCompleted,
    RunExtracted,
    RunRequested,
    RunStarted,
    read_event,
    trusted,
)
from jetl.projection import RunState, fold
from jetl_scheduler.tracker import _behind, untrusted


def state_of(*events: Any) -> RunState:
    return reduce(fold, events, None)  # type: ignore[arg-type,return-value]


def test_a_run_never_requested_or_never_started_is_not_trusted_to_settle() -> None:
    forged = state_of(RunExtracted(pipeline="p", run_id="r", batches=0, records=0))
    assert forged.settled and untrusted(forged) == "the tracker never saw it requested"
    unstarted = state_of(
        RunRequested(pipeline="p", run_id="r"), RunExtracted(pipeline="p", run_id="r", batches=0, records=0)
    )
    assert unstarted.settled and "before any extractor started" in str(untrusted(unstarted))


def test_a_batch_count_below_the_batches_seen_is_not_trusted() -> None:
    loaded = BatchLoaded(pipeline="p", run_id="r", batch_id="r/000000", seq=0, records=1)
    state = state_of(
        RunRequested(pipeline="p", run_id="r"),
        RunStarted(pipeline="p", run_id="r"),
        BatchExtracted(pipeline="p", run_id="r", batch_id="r/000000", seq=0, records=1),
        BatchExtracted(pipeline="p", run_id="r", batch_id="r/000001", seq=1, records=1),
        loaded,
        RunExtracted(pipeline="p", run_id="r", batches=1, records=1),
    )
    assert "says 1 batches, but 2 were seen" in str(untrusted(state))
    honest = state_of(
        RunRequested(pipeline="p", run_id="r"),
        RunStarted(pipeline="p", run_id="r"),
        loaded,
        RunExtracted(pipeline="p", run_id="r", batches=1, records=1),
    )
    assert honest.settled and untrusted(honest) is None


def test_a_cursor_never_moves_back() -> None:
    old = {"field": "updated_at", "value": "2026-11-25T10:00:00Z"}
    assert _behind(old, {"field": "updated_at", "value": "2026-11-25T09:00:00+00:00"})
    assert not _behind(old, {"field": "updated_at", "value": "2026-11-25T11:00:00Z"})
    assert _behind({"value": 10}, {"value": 9}) and not _behind({"value": 10}, {"value": 10})
    assert _behind(
        {"extractors": {"0": {"value": 5}, "1": {"value": 2}}}, {"extractors": {"0": {"value": 6}, "1": {"value": 1}}}
    )
    assert not _behind({"value": "9.5", "type": "decimal"}, {"value": "10.1", "type": "decimal"})  # text: not judged
    assert not _behind({"files": ["a"]}, {"files": []})  # positions that do not compare are not judged
    assert not _behind({"value": 1}, {"value": "2026-01-01"})  # nor are values of different kinds


def test_each_event_type_is_trusted_only_from_the_roles_whose_work_it_reports() -> None:
    loaded = BatchLoaded(pipeline="p", run_id="r", batch_id="r/000000", seq=0, records=1)
    assert trusted(loaded, "loader") and not trusted(loaded, "extractor") and not trusted(loaded, "operator")
    requested = RunRequested(pipeline="p", run_id="r")
    assert trusted(requested, "scheduler") and trusted(requested, "operator")
    assert not any(trusted(requested, r) for r in ("extractor", "transformer", "loader", None))
    extracted = RunExtracted(pipeline="p", run_id="r", batches=0, records=0)
    assert trusted(extracted, "extractor") and not trusted(extracted, "loader")
    rejected = BatchRejected(pipeline="p", run_id="r", batch_id="r/0", seq=0, stage="load", records=1, reason="x")
    assert trusted(rejected, "loader") and trusted(rejected, "scheduler") and not trusted(rejected, "transformer")
    assert read_event(subjects.events("p", "r", "extractor"), loaded.model_dump_json().encode()) is None
    assert read_event(subjects.events("p", "r", "loader"), loaded.model_dump_json().encode()) == loaded
    assert read_event("jetl.events.p.r", loaded.model_dump_json().encode()) is None  # no role: not believed


def test_a_completion_the_tracker_announced_stands_over_a_cancel_it_folded_too_late() -> None:
    run = [RunRequested(pipeline="p", run_id="r"), RunStarted(pipeline="p", run_id="r")]
    late = RunCancelled(pipeline="p", run_id="r", reason="too late")
    done = RunCompleted(pipeline="p", run_id="r", extracted=1, loaded=1, rejected=0, filtered=0)
    for order in ((late, done), (done, late)):  # either order in the log: the tracker completed it first
        st = state_of(*run, *order)
        assert (st.status, st.cancelled, st.error) == ("completed", False, None)


def test_a_settled_run_whose_every_record_the_destination_refused_fails_naming_why() -> None:
    refused = BatchRejected(
        pipeline="p",
        run_id="r",
        batch_id="r/000000",
        seq=0,
        stage="load",
        records=3,
        reason="no column 'x'",
        scope="batch",
    )
    st = state_of(
        RunRequested(pipeline="p", run_id="r"),
        RunStarted(pipeline="p", run_id="r"),
        BatchExtracted(pipeline="p", run_id="r", batch_id="r/000000", seq=0, records=3),
        refused,
        RunExtracted(pipeline="p", run_id="r", batches=1, records=3),
    )
    assert st.settled and st.reconciles and "refused every record" in str(st.refused_by_destination())
    assert "no column 'x'" in str(st.refused_by_destination())
    loaded = BatchLoaded(pipeline="p", run_id="r", batch_id="r/000001", seq=1, records=1)
    assert fold(st, loaded).refused_by_destination() is None  # some rows loaded: it completes, with dead letters
