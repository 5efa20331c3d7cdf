"""The transformer stage in memory (FastStream TestNatsBroker): a raw batch in, a clean batch, events and dead
letters out, without a server."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import (
    ColumnTransformer,
    ConsoleLoader,
    FileExtractor,
    LambdaTransformer,
    Pipeline,
    TypeTransformer,
    subjects,
)
from jetl.errors import TerminalError
from jetl.messages.models import Batch
from jetl.messages.wire import decode_batch, encode_batch, encode_records
from jetl.registry import register
from jetl.runtime.service import bind_in_memory, make_context
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.testing.memory import capture
from jetl.transformers.chain import run_transformers
from jetl_transformer.handlers import make_router


class Raw(BaseModel):
    id: int
    name: str
    at: datetime


class Out(BaseModel):
    id: int
    title: str
    at: datetime


def keep_odd(r: dict[str, Any]) -> dict[str, Any] | None:
    return r if r["id"] % 2 else None


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archiver beside the transformer writes to the data dir's archive: the test's own, not the checkout's."""
    monkeypatch.setenv("JETL_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def pipeline(tmp_path: Any) -> Pipeline:
    p = Pipeline(
        name="unit",
        extractors=[FileExtractor(tmp_path / "x.jsonl")],
        transformers=[
            TypeTransformer(Raw),
            LambdaTransformer(keep_odd),
            ColumnTransformer(rename={"name": "title"}),
        ],
        loader=ConsoleLoader(),
        schema=Out,
    )
    register([p])
    return p


async def transform_in_memory(p: Pipeline, records: list[dict[str, Any]], kinds: list[Kind]) -> dict[Kind, list[bytes]]:
    """One raw batch of `records` (origins `in.jsonl:1`...) through the transformer stage in memory; what it
    published on each of `kinds`."""
    ctx = make_context("transformer", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    bind_in_memory(ctx)  # its per-pipeline consumers, on the in-memory broker
    got = capture(ctx.broker, kinds)
    batch = Batch(
        pipeline=p.name,
        run_id="r1",
        seq=0,
        schema_name=p.schema.__name__,
        schema_hash=p.schema_hash,
        count=len(records),
        origins=[f"in.jsonl:{i}" for i in range(1, len(records) + 1)],
    )
    async with TestNatsBroker(ctx.broker) as br:
        await br.publish(encode_batch(batch, records), subjects.raw(p.name, "r1"), stream="JETL_RAW")
    return got


async def test_raw_batch_becomes_clean_batch_with_rejects_dead_lettered(pipeline: Pipeline) -> None:
    records = [{"id": i, "name": f"n{i}", "at": "2026-11-25T00:00:00Z"} for i in range(1, 7)]
    records[1]["at"] = "not a date"  # id 2: rejected with its field
    got = await transform_in_memory(pipeline, records, [Kind.CLEAN, Kind.EVENTS, Kind.DLQ])
    captured = {"clean": got[Kind.CLEAN], "events": got[Kind.EVENTS], "dlq": got[Kind.DLQ]}

    assert len(captured["clean"]) == 1
    out, body = decode_batch(captured["clean"][0])
    rows = orjson.loads(body)
    assert [r["id"] for r in rows] == [1, 3, 5]
    assert set(rows[0]) == {"id", "title", "at"}
    assert out.batch_id == "r1/000000" and out.count == 3

    dead = [orjson.loads(b) for b in captured["dlq"]]
    assert len(dead) == 1
    rec = dead[0]["records"][0]
    assert (rec["origin"], rec["field"]) == ("in.jsonl:2", "at")
    assert "unit" in dead[0]["reason"] and "in.jsonl:2" in dead[0]["reason"]

    types = [orjson.loads(e)["type"] for e in captured["events"]]
    transformed = [orjson.loads(e) for e in captured["events"] if orjson.loads(e)["type"] == "batch.transformed"]
    assert "batch.rejected" in types
    assert transformed[0]["records_in"] == 6 and transformed[0]["records_out"] == 3
    assert transformed[0]["rejected"] == 1 and transformed[0]["filtered"] == 2


def test_unparsed_lines_are_read_with_the_batch_and_bad_ones_rejected_by_position() -> None:
    """The extractor passes JSON lines on unparsed (Chunk.raw): a line that is not one JSON object is an issue of
    its own at its position in the batch, and the records around it keep theirs."""
    p = Pipeline(
        name="lines",
        extractors=[FileExtractor("x.jsonl")],
        transformers=[TypeTransformer(Raw), ColumnTransformer(rename={"name": "title"})],
        loader=ConsoleLoader(),
        schema=Out,
    )
    texts = [orjson.dumps({"id": i, "name": f"n{i}", "at": "2026-11-25T00:00:00Z"}) + b"\n" for i in range(6)]
    texts[1] = b'{"id": 1, "name": \n'  # malformed
    texts[3] = b"[1, 2]\n"  # JSON, but not an object
    texts[4] = b'{"id": "four", "name": "n4", "at": "2026-11-25T00:00:00Z"}\n'  # an object that fails the type
    body = encode_records(texts)
    clean, encoding, n_in, n_out, issues = run_transformers(p, body, len(texts))
    assert (n_in, n_out) == (6, 3)
    assert [(i.index, i.field) for i in sorted(issues, key=lambda i: i.index)] == [(1, ""), (3, ""), (4, "id")]
    by_index = {i.index: i for i in issues}
    assert "malformed JSON" in by_index[1].message and by_index[1].record == '{"id": 1, "name":'
    assert by_index[3].message == "expected a JSON object, got list" and by_index[3].record == "[1,2]"
    rows = orjson.loads(clean) if encoding == "json" else None
    assert rows is None or [r["id"] for r in rows] == [0, 2, 5]
    # a body that does not even split into the records it announces is the batch's error, not a record's
    with pytest.raises(TerminalError, match="does not read as 7 JSON records"):
        run_transformers(p, body, 7)


def test_a_record_failing_an_in_place_step_is_reported_as_it_came_in() -> None:
    """Columns are changed in place on records fresh from JSON; when a computed column raises, the batch runs again
    copying, so the dead letter holds the record as it arrived (not half renamed)."""

    def ratio(r: dict[str, Any]) -> float:
        return 1 / r["id"]

    class Ratio(BaseModel):
        id: int
        title: str
        at: datetime
        ratio: float

    p = Pipeline(
        name="ratio",
        extractors=[FileExtractor("x.jsonl")],
        transformers=[TypeTransformer(Raw), ColumnTransformer(rename={"name": "title"}, compute={"ratio": ratio})],
        loader=ConsoleLoader(),
        schema=Ratio,
    )
    records = [{"id": i, "name": f"n{i}", "at": "2026-11-25T00:00:00Z"} for i in range(3)]
    _, _, n_in, n_out, issues = run_transformers(p, orjson.dumps(records), 3)
    assert (n_in, n_out) == (3, 2)
    (issue,) = issues
    assert issue.index == 0 and issue.field == "ratio" and "ZeroDivisionError" in issue.message
    assert set(issue.record) == {"id", "name", "at"}  # not renamed to title, no ratio column


async def test_a_clean_batch_larger_than_a_message_is_published_in_parts_in_order(tmp_path: Any) -> None:
    """The transform grows 30 records to ~3 MB, past the 1 MB a message carries: the clean batch goes out in
    parts, each under the limit, in order, all under the batch's id; batch.transformed says how many."""

    def grow(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "title": "x" * 100_000}

    p = Pipeline(
        name="grows",
        extractors=[FileExtractor(tmp_path / "x.jsonl")],
        transformers=[TypeTransformer(Raw), LambdaTransformer(grow), ColumnTransformer(drop=["name"])],
        loader=ConsoleLoader(),
        schema=Out,
    )
    register([p])
    ctx = make_context("transformer", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    bind_in_memory(ctx)  # its per-pipeline consumers, on the in-memory broker
    got = capture(ctx.broker, [Kind.CLEAN, Kind.EVENTS, Kind.DLQ])
    records = [{"id": i, "name": f"n{i}", "at": "2026-11-25T00:00:00Z"} for i in range(30)]
    batch = Batch(pipeline="grows", run_id="r1", seq=4, schema_name="Raw", schema_hash="h", count=30)
    async with TestNatsBroker(ctx.broker) as br:
        await br.publish(encode_batch(batch, records), subjects.raw("grows", "r1"), stream="JETL_RAW")

    assert got[Kind.DLQ] == []
    parts = [decode_batch(m) for m in got[Kind.CLEAN]]
    assert len(parts) >= 3 and all(len(m) <= ctx.bus.max_payload for m in got[Kind.CLEAN])
    assert [(b.batch_id, b.part, b.parts) for b, _ in parts] == [
        ("r1/000004", k, len(parts)) for k in range(len(parts))
    ]
    ids = [r["id"] for _, body in parts for r in orjson.loads(body)]
    assert ids == list(range(30)) and sum(b.count for b, _ in parts) == 30
    [transformed] = [e for e in map(orjson.loads, got[Kind.EVENTS]) if e["type"] == "batch.transformed"]
    assert (transformed["records_out"], transformed["parts"], transformed["rejected"]) == (30, len(parts), 0)


async def test_a_dead_letter_keeps_its_file_and_line_after_earlier_steps_refused_and_filtered(tmp_path: Any) -> None:
    """Issue 27: a record rejected by a later step kept no origin once an earlier step of its batch had rejected
    or filtered any record. The demo pipeline filters before its column step."""

    def ratio(r: dict[str, Any]) -> float:
        return 1 / (r["id"] - 6)  # id 6 fails here, after the type step refused id 2 and the filter dropped evens

    class Ratio(BaseModel):
        id: int
        title: str
        at: datetime
        ratio: float

    p = Pipeline(
        name="aligned",
        extractors=[FileExtractor(tmp_path / "x.jsonl")],
        transformers=[
            TypeTransformer(Raw),
            LambdaTransformer(lambda r: r if r["id"] % 2 or r["id"] == 6 else None),
            ColumnTransformer(rename={"name": "title"}, compute={"ratio": ratio}),
        ],
        loader=ConsoleLoader(),
        schema=Ratio,
    )
    register([p])
    records = [{"id": i, "name": f"n{i}", "at": "2026-11-25T00:00:00Z"} for i in range(1, 9)]
    records[1]["at"] = "not a date"  # id 2, line 2: refused by the type step
    got = await transform_in_memory(p, records, [Kind.CLEAN, Kind.DLQ])

    _, body = decode_batch(got[Kind.CLEAN][0])
    assert [r["id"] for r in orjson.loads(body)] == [1, 3, 5, 7]
    dead = {r["origin"]: r for letter in got[Kind.DLQ] for r in orjson.loads(letter)["records"]}
    assert set(dead) == {"in.jsonl:2", "in.jsonl:6"}  # both with their file:line, none null
    assert dead["in.jsonl:6"]["field"] == "ratio" and "ZeroDivisionError" in dead["in.jsonl:6"]["message"]


class _Entry:
    def __init__(self, value: bytes) -> None:
        self.value, self.revision = value, 1


class _Kv:
    """A state bucket holding one run state (or none)."""

    def __init__(self, state: Any = None) -> None:
        self.state = state

    async def get(self, key: str) -> _Entry:
        from nats.js.errors import KeyNotFoundError

        if self.state is None:
            raise KeyNotFoundError
        return _Entry(self.state.model_dump_json().encode())


async def test_records_marked_transformed_pass_only_in_a_redrive(pipeline: Pipeline) -> None:
    """What a redrive sends back from the loader is validated, not transformed again; a batch marked so in any other
    run (an extractor skipping the transformers) is refused, and one whose run the tracker has not folded yet waits."""
    from jetl.errors import TransientError
    from jetl.projection import RunState
    from jetl_transformer.handlers import _check_redrive

    clean = [{"id": 2, "title": "back", "at": "2026-11-25T00:00:00Z"}]
    body, encoding, n_in, n_out, issues = run_transformers(pipeline, orjson.dumps(clean), 1, transform=False)
    assert (n_in, n_out, issues) == (1, 1, []) and encoding == "json"
    assert orjson.loads(body)[0]["title"] == "back"  # the filter (odd ids) and the rename did not run again

    ctx = make_context("transformer", JetlSettings())
    batch = Batch(pipeline="unit", run_id="r9", seq=0, schema_name="Out", schema_hash="h", count=1, transformed=True)
    ctx.kv = _Kv(RunState(pipeline="unit", run_id="r9", redrive=[7]))  # type: ignore[assignment]
    await _check_redrive(ctx, batch)
    ctx.kv = _Kv(RunState(pipeline="unit", run_id="r9"))  # type: ignore[assignment]
    with pytest.raises(TerminalError, match="is no redrive"):
        await _check_redrive(ctx, batch)
    ctx.kv = _Kv()  # type: ignore[assignment]
    with pytest.raises(TransientError, match="not in the run state yet"):
        await _check_redrive(ctx, batch)
