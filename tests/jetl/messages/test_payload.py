"""Sizing by bytes, letters that always serialize, and a ledger that reconciles only when every batch is there."""

from __future__ import annotations

import itertools

import orjson
import pytest

from jetl.events import (
    BatchExtracted,
    BatchLoaded,
    BatchRejected,
    BatchTransformed,
    RunCancelled,
    RunExtracted,
    RunFailed,
    RunStarted,
)
from jetl.messages.deadletter import DeadLetter
from jetl.messages.models import Batch
from jetl.messages.payload import cut_body, fit_payload
from jetl.projection import RunState, fold


def test_fit_payload_cuts_by_bytes_and_sets_aside_what_fits_no_message() -> None:
    assert fit_payload([10, 10, 10], 100) == ([(0, 3)], [])
    assert fit_payload([40, 40, 40], 100) == ([(0, 2), (2, 3)], [])
    assert fit_payload([10, 500, 10, 10], 100) == ([(0, 1), (2, 4)], [1])
    assert fit_payload([500], 100) == ([], [0])
    runs, big = fit_payload([30] * 50, 100)
    assert big == [] and [b - a for a, b in runs] == [3] * 16 + [2]  # brackets + 3 x (30 bytes + separator) <= 100


def test_a_letter_of_a_record_nested_deeper_than_pydantic_serializes_still_serializes() -> None:
    deep = orjson.loads(b'{"id": 1, "name": ' + b"[" * 600 + b"]" * 600 + b"}")
    dl = DeadLetter(
        pipeline="p",
        run_id="r",
        batch_id="r/000000",
        stage="transform",
        reason="x",
        error_type="RecordError",
        records=[{"index": 0, "origin": "f:1", "field": "name", "message": "m", "record": deep}],
    )
    back = DeadLetter.model_validate_json(dl.to_json())
    assert orjson.loads(back.records[0]["record"]) == deep  # kept whole, as its JSON text


def ev(cls: type, **kw: object) -> object:
    return cls(pipeline="p", run_id="r", **kw)


def test_a_lost_batch_never_reconciles_even_when_the_sums_agree() -> None:
    st: RunState | None = None
    for e in (
        ev(RunStarted),
        ev(BatchExtracted, batch_id="r/000000", seq=0, records=2000),
        ev(BatchLoaded, batch_id="r/000000", seq=0, records=2000),
        ev(RunExtracted, batches=2, records=3999),  # batch 1 never arrived
    ):
        st = fold(st, e)  # type: ignore[arg-type]
    assert st is not None
    assert st.extracted == st.loaded == 2000 and not st.reconciles
    st = fold(st, ev(BatchExtracted, batch_id="r/000001", seq=1, records=1999))  # type: ignore[arg-type]
    assert not st.reconciles  # in flight: not settled yet
    st = fold(st, ev(BatchLoaded, batch_id="r/000001", seq=1, records=1999))  # type: ignore[arg-type]
    assert st.reconciles


def test_cancel_ends_a_run_as_failed_with_its_reason_and_a_later_failure_does_not_overwrite_it() -> None:
    st = fold(None, ev(RunStarted))  # type: ignore[arg-type]
    st = fold(st, ev(RunCancelled, reason="input fixed", by="ops"))  # type: ignore[arg-type]
    assert (st.status, st.cancelled, st.error) == ("failed", True, "cancelled by ops: input fixed")
    st = fold(st, ev(RunFailed, error="stalled"))  # type: ignore[arg-type]
    assert st.error == "cancelled by ops: input fixed"


def test_cut_body_cuts_json_by_records_in_order_and_sets_aside_a_record_over_the_budget() -> None:
    records = [{"id": i, "pad": "x" * (5000 if i == 7 else 300)} for i in range(20)]
    body = orjson.dumps(records)
    parts, big = cut_body(body, "json", 1000)
    assert all(len(b) <= 1000 for b, _ in parts) and len(parts) > 3
    back = [r for b, n in parts for r in orjson.loads(b)]
    assert [n for _, n in parts] == [len(orjson.loads(b)) for b, _ in parts]
    assert back == [r for r in records if r["id"] != 7]  # in order, each once
    assert [(i, orjson.loads(r)) for i, r in big] == [(7, records[7])]
    assert cut_body(orjson.dumps(records[7:8]), "json", 1000) == ([(b"[]", 0)], [(0, orjson.dumps(records[7]))])


def test_cut_body_cuts_arrow_into_record_batch_slices_under_the_budget() -> None:
    import pyarrow as pa

    from jetl.records import from_ipc, to_ipc

    pads = ["y" * (20_000 if i == 3 else 100 + 10 * i) for i in range(200)]
    table = pa.table({"id": pa.array(range(200), pa.int64()), "pad": pa.array(pads, pa.string())})
    parts, big = cut_body(to_ipc(table), "arrow", 8000)
    assert all(len(b) <= 8000 for b, _ in parts) and len(parts) > 5
    back = pa.concat_tables([from_ipc(b) for b, _ in parts])
    assert back.column("id").to_pylist() == [i for i in range(200) if i != 3]
    assert sum(n for _, n in parts) == 199
    assert [(i, orjson.loads(r)["id"]) for i, r in big] == [(3, 3)]


def _part_events(parts: int, rejected_part: int | None = None) -> list[object]:
    """The events of one batch of 300 records transformed into `parts` parts of 100 each, each loaded (or one
    rejected by the destination)."""
    out: list[object] = [
        ev(BatchExtracted, batch_id="r/000000", seq=0, records=300),
        ev(BatchTransformed, batch_id="r/000000", seq=0, records_in=300, records_out=300, parts=parts),
    ]
    for k in range(parts):
        if k == rejected_part:
            out.append(
                ev(
                    BatchRejected,
                    batch_id="r/000000",
                    seq=0,
                    part=k,
                    parts=parts,
                    stage="load",
                    records=100,
                    reason="refused",
                    scope="batch",
                )
            )
        else:
            out.append(ev(BatchLoaded, batch_id="r/000000", seq=0, part=k, parts=parts, records=100))
    return out


def _fold_all(events: list[object]) -> RunState:
    st = fold(None, ev(RunExtracted, batches=1, records=300))
    for e in events:
        st = fold(st, e)  # type: ignore[arg-type]
    return st


def test_a_batch_in_parts_settles_when_every_part_has_in_any_order_and_under_redelivery() -> None:
    events = _part_events(3)
    for order in itertools.permutations(events):
        st = _fold_all([*order, *order[:2]])  # and two of them delivered again
        b = st.batches["r/000000"]
        assert (b.outcome, b.loaded, b.parts, st.loaded, st.tally.settled) == ("loaded", 300, 3, 300, 1), order
        assert st.reconciles
    # part by part, it is not settled until the last part is in (a part may come before batch.transformed)
    st = _fold_all([events[0], events[3], events[2]])
    assert st.batches["r/000000"].outcome == "pending" and st.loaded == 200 and not st.settled
    st = fold(st, events[4])  # type: ignore[arg-type]
    assert st.batches["r/000000"].outcome == "loaded" and st.settled and st.loaded == 300
    v = st.batches["r/000000"].v
    st = fold(st, events[3])  # type: ignore[arg-type]
    assert st.batches["r/000000"].v == v and st.loaded == 300  # a redelivered part changes nothing


def test_a_batch_with_one_part_rejected_counts_that_part_rejected_and_the_rest_loaded() -> None:
    events = _part_events(3, rejected_part=1)
    for order in itertools.permutations(events):
        st = _fold_all(list(order) + list(order))
        b = st.batches["r/000000"]
        assert (b.outcome, b.rejected_stage, b.loaded, b.load_rejected) == ("rejected", "load", 200, 100)
        assert (st.loaded, st.rejected, st.tally.settled) == (200, 100, 1) and st.reconciles


def test_a_batch_in_one_message_keeps_its_ids_and_a_small_ledger() -> None:
    one = Batch(pipeline="p", run_id="r", seq=3, schema_name="S", schema_hash="h", count=1)
    assert one.part_id == one.batch_id == "r/000003"
    part = one.model_copy(update={"part": 1, "parts": 2})
    assert part.part_id == "r/000003/part1" and part.batch_id == "r/000003"
    loaded = ev(BatchLoaded, batch_id="r/000003", seq=3, records=1)
    assert loaded.msg_id() == "r/000003/batch.loaded"  # type: ignore[attr-defined]
    parts = [ev(BatchLoaded, batch_id="r/000003", seq=3, part=k, parts=2, records=1) for k in range(2)]
    assert len({e.msg_id() for e in parts}) == 2  # type: ignore[attr-defined]
    transformed = ev(BatchTransformed, batch_id="r/000003", seq=3, records_in=2, records_out=2, parts=2)
    assert transformed.msg_id() == "r/000003/batch.transformed"  # type: ignore[attr-defined]
    assert _fold_all([loaded]).batches["r/000003"].part_counts is None
    letters = {DeadLetter.of_batch(b, b"[]", "load", ValueError("x")).msg_id for b in (part, one)}
    assert len(letters) == 2
    with pytest.raises(ValueError):
        Batch(pipeline="p", run_id="r", seq=3, schema_name="S", schema_hash="h", count=1, part=2, parts=2)
