"""`jetl.runsummary.decode_run` (what `jetl status` reads off the state bucket, without pydantic) against `RunState`
(pydantic): on what the tracker writes they agree field by field; on any other value the quick decode declines, and
`RunState` judges it, or it agrees with `RunState`'s validation."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jetl.projection import RunState, fold
from jetl.runsummary import RunSummary, Totals, decode_run
from tests.jetl.cli.test_status import _runs

FIELDS = [f.name for f in dataclasses.fields(RunSummary)]


def _same(summary: RunSummary, state: RunState) -> None:
    for name in FIELDS:
        mine, theirs = getattr(summary, name), getattr(state, name)
        if name == "tally":
            assert dataclasses.asdict(mine) == theirs.model_dump(), name
        else:
            assert mine == theirs, name
            if isinstance(mine, datetime):
                assert mine.utcoffset() == theirs.utcoffset()
    assert summary.counts() == state.counts() and summary.reconciles == state.reconciles
    assert summary.settled == state.settled and summary.settled_batches == state.settled_batches


def _folded() -> list[RunState]:
    states: dict[str, RunState] = {}
    for ev in _runs():
        states[ev.run_id] = fold(states.get(ev.run_id), ev)
    return list(states.values())


def test_what_the_tracker_writes_is_decoded_as_runstate_reads_it() -> None:
    states = _folded()
    assert len(states) == 5
    for state in states:
        raw = state.model_dump_json().encode()
        summary = decode_run(raw)
        assert summary is not None, raw  # the quick decode takes every value the tracker writes
        _same(summary, RunState.model_validate_json(raw))


ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "",
            "x",
            "running",
            "failed",
            "7",
            "2026-11-01T00:00:00Z",
            "2026-11-01T00:00:00.123+05:00",
            "2026-11-01",
            "2026-11-01T00:00:00",
            "2026-11-01 00:00:00Z",
            "1700000000",
        ]
    ),
    st.lists(st.one_of(st.integers(0, 9), st.text(max_size=3)), max_size=3),
    st.dictionaries(
        st.sampled_from(["extracted", "loaded", "settled", "batches", "other", "value"]), st.integers(0, 5)
    ),
)


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, 4), changes=st.dictionaries(st.sampled_from([*FIELDS, "nope"]), ODD, max_size=3))
def test_any_other_value_is_declined_or_read_as_runstate_reads_it(which: int, changes: dict[str, Any]) -> None:
    data = orjson.loads(_folded()[which].model_dump_json())
    data.update(changes)
    raw = orjson.dumps(data)
    summary = decode_run(raw)
    if summary is None:
        return  # RunState judges it (`jetl.bucket.run_summaries`)
    try:
        state = RunState.model_validate_json(raw)
    except ValidationError as exc:
        raise AssertionError(f"the quick decode took what RunState refuses: {changes}") from exc
    _same(summary, state)


def test_values_that_are_not_a_run_state_are_left_to_runstate() -> None:
    assert decode_run(b"not json") is None
    assert decode_run(b"[]") is None
    assert decode_run(b'{"pipeline": "p"}') is None  # no run id
    at = datetime(2026, 11, 1, tzinfo=timezone(timedelta(hours=5)))
    summary = decode_run(orjson.dumps({"pipeline": "p", "run_id": "r", "requested_at": at.isoformat()}))
    assert summary is not None and summary.requested_at == at and summary.tally == Totals()
    assert summary.requested_at.astimezone(UTC).hour == 19
