"""Messages are read on receipt as untrusted input: ids that name subjects, folders and tables must be tokens."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from jetl.errors import ConfigError, TerminalError
from jetl.events import parse_event
from jetl.messages.models import Batch
from jetl.messages.wire import decode_batch, encode_batch

GOOD = {"pipeline": "p", "run_id": "p-1", "seq": 0, "schema_name": "Row", "schema_hash": "h", "count": 0}


def payload(**fields: object) -> bytes:
    return orjson.dumps({**GOOD, **fields}) + b"\n[]"


def test_a_well_formed_envelope_reads_back() -> None:
    batch, body = decode_batch(encode_batch(Batch(**GOOD, supersedes="p-0/000003"), []))  # type: ignore[arg-type]
    assert batch.batch_id == "p-1/000000" and batch.supersedes == "p-0/000003" and body == b"[]"
    parted, _ = decode_batch(payload(partition="p0001", supersedes="p-0/p0001/000003"))
    assert parted.batch_id == "p-1/p0001/000000" and parted.supersedes == "p-0/p0001/000003"


@pytest.mark.parametrize(
    "fields",
    [
        {"run_id": "../../../../tmp/x"},
        {"run_id": "a.b"},
        {"run_id": ""},
        {"pipeline": "p/../q"},
        {"pipeline": "*"},
        {"seq": -1},
        {"supersedes": "../x/000001"},
        {"supersedes": "p-0"},
        {"supersedes": "p-0/000001/../../y"},
        {"supersedes": "p-0/../000001"},
        {"partition": ".."},
    ],
)
def test_an_envelope_with_ids_that_are_not_tokens_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises((ValidationError, ConfigError)):
        decode_batch(payload(**fields))


def test_a_message_without_an_envelope_line_is_terminal() -> None:
    with pytest.raises(TerminalError, match="no envelope line"):
        decode_batch(b'{"pipeline": "p"}')


@pytest.mark.parametrize(
    "event",
    [
        {"type": "run.extracted", "pipeline": "p", "run_id": "../x", "batches": 0, "records": 0},
        {"type": "run.extracted", "pipeline": "p", "run_id": "r", "batches": -1, "records": 0},
        {"type": "batch.loaded", "pipeline": "p", "run_id": "r", "batch_id": "../../r/1", "seq": 1, "records": 1},
        {"type": "run.requested", "pipeline": "p", "run_id": "r", "parent_run_id": "a b"},
    ],
)
def test_events_with_bad_ids_or_counts_are_refused(event: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_event(orjson.dumps(event))


def test_a_dlq_message_that_is_not_a_letter_of_its_subject_reads_as_malformed() -> None:
    from jetl import subjects
    from jetl.messages.deadletter import MALFORMED_LETTER, DeadLetter

    good = DeadLetter(
        pipeline="shop", run_id="shop-r1", batch_id="shop-r1/000000", stage="load", reason="r", error_type="E"
    )
    assert DeadLetter.read(subjects.dlq("shop", "load"), good.to_json()) == good
    for subject, body in [
        (subjects.dlq("shop", "transform"), b"{}"),
        (subjects.dlq("shop", "transform"), b"\xff not json"),
        (subjects.dlq("shop", "transform"), good.to_json()),  # a load letter on the transform subject
        (subjects.dlq("other", "load"), good.to_json()),  # another pipeline's subject
    ]:
        dl = DeadLetter.read(subject, body)
        assert dl.error_type == MALFORMED_LETTER and dl.reason.startswith("malformed dead letter")
        assert (dl.pipeline, dl.stage) == tuple(subject.split(".")[2:])  # shown under the subject it came on
        assert "\xff" not in dl.reason
    assert DeadLetter.read("jetl.dlq.a.b.c", b"{}").pipeline == "unknown"
