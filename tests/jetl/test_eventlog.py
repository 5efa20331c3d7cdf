"""The pure logic under backfill, replay, redrive and the ledger: interval splitting, the fold under redelivery and
reordering, what each run should hold in the destination, and which dead letters a redrive takes."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from jetl.errors import ConfigError
from jetl.events import (
    BatchExtracted,
    BatchLoaded,
    BatchRejected,
    BatchTransformed,
    RunCompleted,
    RunExtracted,
    RunRequested,
    RunStarted,
)
from jetl.messages.deadletter import MALFORMED_INPUT, DeadLetter
from jetl.messages.models import RunRequest
from jetl.ops.backfill import retry_run_id, slot_attempts
from jetl.ops.redrive import dead_letter_status, redrivable, redrive_run_id
from jetl.projection import RunState, expected_rows, fold
from jetl.schedule import Cron, backfill_slots


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_backfill_splits_the_range_into_schedule_intervals_with_the_schedulers_run_ids() -> None:
    slots = backfill_slots("sales", Cron("0 6 * * *"), utc(2026, 11, 1), utc(2026, 11, 4))
    assert [(s.run_id, s.start, s.end) for s in slots] == [
        ("sales-20261101T0600Z", utc(2026, 11, 1, 6), utc(2026, 11, 2, 6)),
        ("sales-20261102T0600Z", utc(2026, 11, 2, 6), utc(2026, 11, 3, 6)),
        ("sales-20261103T0600Z", utc(2026, 11, 3, 6), utc(2026, 11, 4, 6)),
    ]  # intervals that *start* in [start, end); the last one ends after `end`
    assert backfill_slots("sales", Cron("0 6 * * *"), utc(2026, 11, 1), utc(2026, 11, 4)) == slots  # deterministic
    assert backfill_slots("sales", Cron("0 6 * * *"), utc(2026, 11, 1, 7), utc(2026, 11, 2, 6)) == []


def test_backfill_of_a_zoned_schedule_across_a_dst_change() -> None:
    slots = backfill_slots("eu", Cron("0 0 * * *", tz="Europe/Berlin"), utc(2026, 10, 24), utc(2026, 10, 27))
    assert [s.run_id for s in slots] == ["eu-20261024T2200Z", "eu-20261025T2300Z", "eu-20261026T2300Z"]
    hours = [(s.end - s.start).total_seconds() / 3600 for s in slots]
    assert hours == [25.0, 24.0, 24.0]  # local midnights: 25 October 2026 has 25 hours
    hourly = backfill_slots("h", Cron("0 * * * *"), utc(2026, 11, 1), utc(2026, 11, 1, 5, 30))
    assert len(hourly) == 6 and len({s.run_id for s in hourly}) == 6


def events(run: str, seqs: int, loaded: dict[int, int], trigger: str = "manual", **req: object) -> list[object]:
    base = {"pipeline": "p", "run_id": run}
    out: list[object] = [RunRequested(**base, trigger=trigger, **req), RunStarted(**base)]  # type: ignore[arg-type]
    for s in range(seqs):
        bid = f"{run}/{s:06d}"
        n = loaded.get(s, 0)
        out.append(BatchExtracted(**base, batch_id=bid, seq=s, records=10))
        out.append(BatchTransformed(**base, batch_id=bid, seq=s, records_in=10, records_out=n, filtered=10 - n))
        out.append(BatchLoaded(**base, batch_id=bid, seq=s, records=n))
    out.append(RunExtracted(**base, batches=seqs, records=10 * seqs))
    return out


def fold_all(evs: list[object]) -> RunState:
    state = None
    for ev in evs:
        state = fold(state, ev)  # type: ignore[arg-type]
    assert state is not None
    return state


def test_fold_is_the_same_under_redelivery_and_reordering() -> None:
    evs = events("r1", 3, {0: 10, 1: 7, 2: 9}, trigger="replay", parent_run_id="r0", shadow=True)
    evs.append(RunCompleted(pipeline="p", run_id="r1", extracted=30, loaded=26, rejected=0, filtered=4))
    want = fold_all(evs)
    shuffled = evs[:1] + random.Random(7).sample(evs[1:-1], len(evs) - 2) + evs[-1:]
    again = fold_all(shuffled + random.Random(8).sample(evs[:-1], 5))  # some redelivered after completion
    for s in (want, again):
        assert s.status == "completed" and s.reconciles and s.settled
        assert s.counts() == {"extracted": 30, "loaded": 26, "rejected": 0, "filtered": 4, "batches": 3}
        assert (s.trigger, s.parent_run_id, s.shadow) == ("replay", "r0", True)


def test_expected_rows_follow_supersession_and_shadows() -> None:
    parent = fold_all(events("r0", 3, {0: 10, 1: 10, 2: 10}))
    shadow = fold_all(events("r1", 3, {0: 9, 1: 9, 2: 9}, trigger="replay", parent_run_id="r0", shadow=True))
    half = events("r2", 3, {0: 8, 1: 8}, trigger="replay", parent_run_id="r0")
    half = [e for e in half if not (isinstance(e, BatchLoaded) and e.seq == 2)]  # batch 2 not loaded yet
    replay = fold_all(half)
    rejected = BatchRejected(
        pipeline="p", run_id="r2", batch_id="r2/000002", seq=2, stage="load", records=8, reason="x", scope="batch"
    )
    assert expected_rows([parent, shadow, replay]) == {"r0": 10, "r1": 0, "r2": 16}  # r0's batch 2 still stands
    replay = fold(replay, rejected)
    assert expected_rows([parent, shadow, replay]) == {"r0": 10, "r1": 0, "r2": 16}  # a dead batch replaces nothing


def dl(run: str, stage: str = "transform") -> DeadLetter:
    return DeadLetter(
        pipeline="p",
        run_id=run,
        batch_id=f"{run}/000000",
        stage=stage,
        reason="x",  # type: ignore[arg-type]
        error_type="E",
        records=[{"index": 0, "record": {"id": 1}}],
    )


def test_a_redrive_takes_each_dead_letter_once() -> None:
    letters = [(3, dl("r1")), (4, dl("r1", "extract")), (7, dl("r2", "load")), (9, dl("r2"))]
    assert redrivable(letters, []) == [3, 7, 9]  # extract-stage letters have no record to send
    assert redrivable(letters, [], run_id="r2") == [7, 9]
    taken = fold_all([RunRequested(pipeline="p", run_id="p-rdx", trigger="redrive", redrive=[3, 7])])
    assert redrivable(letters, [taken]) == [9]
    failed = taken.model_copy(update={"status": "failed"})
    assert redrivable(letters, [failed]) == [3, 7, 9]  # a failed redrive gives its letters back

    first = redrive_run_id("p", [3, 7, 9], [])
    assert first == redrive_run_id("p", [9, 3, 7], [taken]) and first.startswith("p-rd")  # same letters, same run
    retried = fold_all([RunRequested(pipeline="p", run_id=first, trigger="redrive", redrive=[3, 7, 9])])
    retried = retried.model_copy(update={"status": "failed"})
    assert redrive_run_id("p", [3, 7, 9], [retried]) != first  # but a failed one can be tried again


def test_dead_letters_of_a_shadow_trial_or_a_replaced_batch_are_not_redriven() -> None:
    unreadable = dl("r1-trial").model_copy(update={"error_type": MALFORMED_INPUT})  # a malformed line, met again
    letters = [(1, dl("r1")), (2, dl("r1-trial")), (3, dl("r1-rp")), (4, dl("r2")), (5, unreadable)]
    trial = fold_all(events("r1-trial", 1, {0: 9}, trigger="replay", parent_run_id="r1", shadow=True))
    replay = fold_all(events("r1-rp", 1, {0: 9}, trigger="replay", parent_run_id="r1"))
    status = dead_letter_status(letters, [trial, replay])
    assert status == {1: "superseded by r1-rp", 2: "shadow r1-trial", 3: None, 4: None, 5: "shadow r1-trial"}
    assert redrivable(letters, [trial, replay]) == [3, 4]  # the replay's own rejects stand for its parent's


def test_run_request_refuses_contradictions() -> None:
    with pytest.raises(ConfigError):
        RunRequest(pipeline="p", run_id="r", shadow=True)  # a shadow is diffed against a replayed parent
    with pytest.raises(ConfigError):
        RunRequest(pipeline="p", run_id="r", replay_of="r0", redrive=[1])
    with pytest.raises(ConfigError):
        RunRequest(pipeline="p", run_id="r", replay_of="bad.id")


def test_ledger_verdict_compares_finished_runs_with_the_destination() -> None:
    from jetl.ops.destination import DestinationCount
    from jetl.ops.ledger import ledger_report, ledger_verdict

    done = fold_all(events("r1", 2, {0: 10, 1: 8}))
    done = fold(done, RunCompleted(pipeline="p", run_id="r1", extracted=20, loaded=18, rejected=0, filtered=2))
    flying = fold_all(events("r2", 1, {0: 5})[:3])  # requested, started, extracted: not loaded yet

    def verdict(by_run: dict[str, int] | None, total: int, exact: bool = True) -> dict[str, object]:
        dest = DestinationCount(pipeline="p", destination="d", total=total, by_run=by_run, exact=exact)
        return ledger_verdict(ledger_report([done, flying], by_run), dest)

    assert verdict({"r1": 18, "r2": 3}, 21)["destination_matches"] is True  # r2 in flight: not judged yet
    assert verdict({"r1": 17}, 17)["mismatched_runs"] == ["r1"]
    assert verdict({"r1": 18, "": 4}, 22)["stray_rows"] == {"": 4}  # rows no run of the ledger wrote
    assert verdict(None, 18)["destination_matches"] is None  # totals wait until nothing is in flight
    assert verdict({"r1": 1}, 1, exact=False)["destination_matches"] is None  # merge tables are not compared
    assert verdict({"r1": 18}, 18)["reconciles"] is True


def test_a_slots_attempts_are_its_run_id_then_its_numbered_retries() -> None:
    def run(run_id: str, status: str) -> RunState:
        return RunState(pipeline="p", run_id=run_id, status=status)  # type: ignore[arg-type]

    slot = "p-20261101T0300Z"
    runs = [
        run(f"{slot}-retry10", "running"),
        run(f"{slot}-retry2", "failed"),
        run("p-20261101T0400Z", "completed"),  # another slot
        run(f"{slot}-retryx", "completed"),  # not a retry of it
        run(slot, "failed"),
        run(f"{slot}-retry1", "failed"),
    ]
    attempts = slot_attempts(slot, runs)
    assert [a.run_id for a in attempts] == [slot, f"{slot}-retry1", f"{slot}-retry2", f"{slot}-retry10"]
    assert retry_run_id(slot, attempts[:1]) == f"{slot}-retry1"
    assert retry_run_id(slot, attempts[:3]) == f"{slot}-retry3"
    assert slot_attempts("p-20261101T0500Z", runs) == []
