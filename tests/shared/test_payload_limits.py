"""Sizing by bytes, letters that always serialize, and a ledger that reconciles only when every batch is there."""

from __future__ import annotations

import orjson

from jetl.events import BatchExtracted, BatchLoaded, RunCancelled, RunExtracted, RunFailed, RunStarted
from jetl.messages import DeadLetter, fit_payload
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
