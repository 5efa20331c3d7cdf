"""The transformer's typed fast path (Arrow's JSON reader, then column steps on the table) against pydantic: whenever
the fast path returns a table, the dicts way over the same batch gives the same rows, valid or not. A differential
property test."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pydantic import BaseModel, ConfigDict

from jetl import (
    ClickHouseLoader,
    ColumnTransformer,
    ConsoleLoader,
    FileExtractor,
    LambdaTransformer,
    Pipeline,
    TypeTransformer,
)
from jetl.messages.wire import encode_records
from jetl.records import from_ipc, records_adapter
from jetl.transformers.chain import arrow_path, run_transformers


class Flat(BaseModel):
    id: int
    ts: datetime
    user: str
    amount: float
    ok: bool
    note: str | None = None


FIELDS = ["id", "ts", "user", "amount", "ok", "note"]


def flat_pipeline(model: type[BaseModel] = Flat, **kw: Any) -> Pipeline:
    return Pipeline(
        name="flat",
        extractors=[FileExtractor(Path("/nonexistent/x.jsonl"))],
        transformers=kw.pop("transformers", [TypeTransformer(model)]),
        loader=kw.pop("loader", ClickHouseLoader("flat", order_by=["id"])),
        schema=model,
        **kw,
    )


PIPELINE = flat_pipeline()


def j(value: Any) -> str:
    """JSON text as Python writes it (NaN and Infinity as those literals, which pydantic reads)."""
    return json.dumps(value, ensure_ascii=False)


zones = st.one_of(
    st.just(""),
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+02:00", "-05:00", "+05:30", "+0530", "+05", "+23:59", "+24:00"]),
)


@st.composite
def timestamp_text(draw: st.DrawFn) -> str:
    dt = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    sep = draw(st.sampled_from(["T", " ", "t", "_"]))
    digits = draw(st.integers(0, 9))
    frac = f".{dt.microsecond:06d}{'0' * 9}"[: digits + 1] if digits else ""
    text = dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S").rjust(19, "0") + frac + draw(zones)
    return draw(st.sampled_from([text, text[:10], text[:16], dt.strftime("%Y-%m-%dT%H:%M:60Z")]))


timestamps = st.one_of(
    timestamp_text().map(j),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9))])).map(
        lambda d: j(d.isoformat())
    ),
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(['"2026-02-30T00:00:00Z"', '"now"', '""', '"2026-01-01T00:00:00.123456789+01:00"']),
)
ints = st.one_of(
    st.integers().map(str),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.integers(-(2**63), 2**63).map(lambda i: j(str(i))),
    st.sampled_from(["1.0", "1e3", "-0", "0.5", "true", "1E2", "-9223372036854775809"]),
)
floats = st.one_of(
    st.floats().map(j),
    st.integers().map(str),
    st.floats(allow_nan=False).map(lambda f: j(str(f))),
    st.sampled_from(["NaN", "Infinity", "-Infinity", '"nan"', '"inf"', "1e400", "-0.0", "1E-400", "0.1e1"]),
)
strings = st.one_of(
    st.text().map(j),
    st.text().map(lambda s: json.dumps(s)),  # \u escapes
    st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', "1", "true", '"caf\\u00e9"', '"\xff"']),
)
bools = st.sampled_from(["true", "false", '"true"', "0", "1", '"yes"', "1.0"])
# Per field: a value of its type most of the time (so that whole batches reach the fast path and their values are
# compared), anything else otherwise.
TYPED = {
    "id": st.integers(-(2**63), 2**63 - 1).map(str),
    "ts": st.one_of(timestamp_text().map(j), st.datetimes(timezones=st.just(UTC)).map(lambda d: j(d.isoformat()))),
    "user": st.text().map(j),
    "amount": st.one_of(st.floats().map(j), st.integers(-(2**70), 2**70).map(str)),
    "ok": st.sampled_from(["true", "false"]),
    "note": st.one_of(st.text().map(j), st.just("null")),
}
ANY = {"id": ints, "ts": timestamps, "user": strings, "amount": floats, "ok": bools, "note": strings}


@st.composite
def line(draw: st.DrawFn) -> bytes:
    """One JSONL line, mostly record-shaped, with any of the ways it may differ: a value of another type or out of
    range, null, a missing, duplicated or extra field, an escaped key; or not a record at all."""
    kind = draw(st.sampled_from(["record"] * 20 + ["junk"]))
    if kind == "junk":
        return draw(
            st.sampled_from([b"", b"   ", b"[1]", b"1", b"null", b'{"id":1}{"id":2}', b"{", b"\xef\xbb\xbf{}", b'"x"'])
        )
    pairs: list[tuple[str, str]] = []
    for name in FIELDS:
        how = draw(st.sampled_from(["typed"] * 30 + ["any", "null", "missing", "twice"]))
        if how == "missing":
            continue
        value = "null" if how == "null" else draw((TYPED if how == "typed" else ANY)[name])
        key = j(name) if not draw(st.booleans()) or name != "id" else '"\\u0069d"'
        pairs.append((key, value))
        if how == "twice":
            pairs.append((key, draw(ANY[name])))
    if draw(st.integers(0, 3)) == 0:
        extra = draw(st.sampled_from(['{"a":[1,{"b":null}]}', "1", '"x"', "NaN", "[]", "null"]))
        pairs.insert(draw(st.integers(0, len(pairs))), (j(draw(st.sampled_from(["extra", "Id", "ID", ""]))), extra))
    pad = draw(st.sampled_from(["", " ", "\t", "\r"]))
    text = pad + "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}" + pad
    return text.encode("utf-8", errors="surrogatepass")


def valid_line(i: int) -> bytes:
    ts = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=i % 5))) + timedelta(seconds=i, microseconds=i)
    return j({"id": i, "ts": ts.isoformat(), "user": f"u{i}é", "amount": i / 7, "ok": i % 2 == 0}).encode()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return type(a) is type(b) and a == b


def assert_same_as_pydantic(pipeline: Pipeline, body: bytes, count: int) -> bool:
    """True when the fast path took the batch; then pydantic's way must give the same table and no issue."""
    path = arrow_path(pipeline)
    assert path is not None
    table = path.run(body, count)
    if currently_in_test_context():
        event("fast path" if table is not None else "pydantic")
    if table is None:
        return False
    clean, encoding, n_in, n_out, issues = run_transformers(pipeline, body, count, arrow_json=False)
    assert (encoding, n_in, n_out, [i.describe("flat") for i in issues]) == ("arrow", count, count, [])
    slow = from_ipc(clean)
    assert slow.schema.equals(table.schema)
    for name in table.column_names:
        fast_values, slow_values = table.column(name).to_pylist(), slow.column(name).to_pylist()
        assert all(same(a, b) for a, b in zip(fast_values, slow_values, strict=True)), (name, fast_values, slow_values)
    return True


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line(), min_size=1, max_size=4))
def test_the_fast_path_agrees_with_pydantic_on_any_input(lines: list[bytes]) -> None:
    assert_same_as_pydantic(PIPELINE, encode_records(lines), len(lines))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=50), st.data())
def test_the_fast_path_takes_valid_batches_and_any_bad_line_sends_the_batch_to_pydantic(
    ids: list[int], data: st.DataObject
) -> None:
    lines = [valid_line(i) for i in ids]
    body = encode_records(lines)
    assert assert_same_as_pydantic(PIPELINE, body, len(lines))  # taken: a valid batch is read by Arrow
    bad = data.draw(line())
    at = data.draw(st.integers(0, len(lines)))
    assert_same_as_pydantic(PIPELINE, encode_records([*lines[:at], bad, *lines[at:]]), len(lines) + 1)


def test_a_rejected_record_is_still_dead_lettered_by_position_when_the_fast_path_is_on() -> None:
    lines = [valid_line(1), b'{"id":"x","ts":"2026-01-01T00:00:00Z","user":"u","amount":1,"ok":true}', valid_line(3)]
    clean, encoding, n_in, n_out, issues = run_transformers(PIPELINE, encode_records(lines), 3)
    assert (encoding, n_in, n_out) == ("arrow", 3, 2)
    assert [(i.index, i.field) for i in issues] == [(1, "id")]
    assert from_ipc(clean).column("id").to_pylist() == [1, 3]


class Shaped(BaseModel):
    """Flat, reshaped as the benchmark's job does: a rename, a computed column, a dropped one."""

    id: int
    ts: datetime
    user_id: str
    amount: float
    cents: int
    note: str | None = None


RENAME = {"user": "user_id"}
CENTS = pc.round(pc.multiply(pc.field("amount"), 100), round_mode="half_to_even").cast(pa.int64())


def cents(record: dict[str, Any]) -> int:
    return round(record["amount"] * 100)


SHAPED = flat_pipeline(
    Shaped,
    transformers=[
        TypeTransformer(Flat),
        ColumnTransformer(rename=RENAME, compute={"cents": CENTS}, drop=["ok"]),
    ],
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line(), min_size=1, max_size=4))
def test_the_fast_path_through_column_steps_agrees_with_the_dicts_way_on_any_input(lines: list[bytes]) -> None:
    assert_same_as_pydantic(SHAPED, encode_records(lines), len(lines))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=50), st.data())
def test_valid_batches_take_the_fast_path_through_column_steps(ids: list[int], data: st.DataObject) -> None:
    lines = [valid_line(i) for i in ids]
    assert assert_same_as_pydantic(SHAPED, encode_records(lines), len(lines))
    bad = data.draw(line())
    at = data.draw(st.integers(0, len(lines)))
    assert_same_as_pydantic(SHAPED, encode_records([*lines[:at], bad, *lines[at:]]), len(lines) + 1)


def test_the_expression_and_python_round_agree_and_a_row_it_cannot_compute_is_rejected_alone() -> None:
    amounts = [0.125, 2.5, 1.005, 12.345, -0.5, 1e15, 123456.785]
    lines = [
        j({"id": i, "ts": "2026-01-01T00:00:00Z", "user": "u", "amount": a, "ok": True}).encode()
        for i, a in enumerate(amounts)
    ]
    clean, encoding, n_in, n_out, issues = run_transformers(SHAPED, encode_records(lines), len(lines))
    assert (encoding, n_in, n_out, issues) == ("arrow", 7, 7, [])
    assert from_ipc(clean).column("cents").to_pylist() == [round(a * 100) for a in amounts]
    too_big = j({"id": 9, "ts": "2026-01-01T00:00:00Z", "user": "u", "amount": 1e300, "ok": True}).encode()
    clean, encoding, n_in, n_out, issues = run_transformers(SHAPED, encode_records([*lines, too_big]), 8)
    assert (encoding, n_in, n_out) == ("arrow", 8, 7)  # the dicts way: the row whose cents overflow int64 is out
    assert [(i.index, i.field) for i in issues] == [(7, "cents")] and "compute raised" in issues[0].describe("flat")
    assert from_ipc(clean).column("id").to_pylist() == list(range(7))


class Strict(BaseModel):
    model_config = ConfigDict(strict=True)
    id: int


class RequiredOptional(BaseModel):
    id: int
    note: str | None


class Dated(BaseModel):
    id: int
    day: Any


@pytest.mark.parametrize(
    "pipeline",
    [
        flat_pipeline(Strict),  # a setting that changes validation
        flat_pipeline(RequiredOptional),  # a missing key is an error, a null is not: the reader sees both as null
        flat_pipeline(Dated),  # not a bare type
        flat_pipeline(loader=ConsoleLoader()),  # a loader that does not take Arrow
        flat_pipeline(transformers=[TypeTransformer(Flat), LambdaTransformer(lambda r: r)]),
        flat_pipeline(transformers=[TypeTransformer(Flat, by_alias=True)]),
        flat_pipeline(
            Shaped, transformers=[TypeTransformer(Flat), ColumnTransformer(rename=RENAME, compute={"cents": cents})]
        ),
    ],
    ids=["strict", "required-optional", "not-bare", "json-loader", "more-transformers", "by-alias", "a-function"],
)
def test_pipelines_the_fast_path_cannot_prove_equal_do_not_take_it(pipeline: Pipeline) -> None:
    assert arrow_path(pipeline) is None


def test_only_raw_line_batches_are_read() -> None:
    reader = records_adapter(Flat)
    lines = [valid_line(1), valid_line(2)]
    assert reader.arrow_from_json_lines(encode_records(lines), 2) is not None
    assert reader.arrow_from_json_lines(b"[" + b",".join(lines) + b"]", 2) is None  # one array, not lines
    assert reader.arrow_from_json_lines(encode_records(lines), 3) is None
    assert reader.arrow_from_json_lines(encode_records([b'{"id":1}{"id":2}', b" "]), 2) is None


def test_lines_read_from_a_file_keep_their_newline_and_still_take_the_fast_path() -> None:
    """The file extractor forwards each line as read, its newline included: `[line\\n\\n,line\\n]`."""
    lines = [valid_line(i) + b"\n" for i in range(5)]
    assert assert_same_as_pydantic(PIPELINE, encode_records(lines), 5)
    assert assert_same_as_pydantic(SHAPED, encode_records(lines), 5)
    two_in_one = [valid_line(1) + valid_line(2) + b"\n", b"\n"]  # a line of two objects beside a blank one
    assert records_adapter(Flat).arrow_from_json_lines(encode_records(two_in_one), 2) is None
