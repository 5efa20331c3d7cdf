"""Nothing in a message chooses what the extractor touches. A forged partition work item naming a file outside the
extractor's path (the NATS users file, a `..` path, a symlink out of the folder) is refused before the file is
opened, with an error that names neither the file nor its key, and nothing reaches JETL_RAW; a run request whose
body names another pipeline than its subject is dropped unread; a redrive takes only dead letters that came on
their pipeline's own subject. Each attack has a control beside it (the same message, honest) that does go through,
so every refusal here could fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats as nats_py
import orjson
import pytest
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import ConsoleLoader, FileExtractor, Pipeline, subjects
from jetl.errors import TerminalError
from jetl.extractors.file import extractor as file_extractor
from jetl.messages.deadletter import DeadLetter
from jetl.messages.models import PartitionWork, RunRequest
from jetl.registry import register
from jetl.runtime.service import make_context
from jetl.settings import JetlSettings, NatsSettings
from jetl.state import put_cursor
from jetl.subjects import Kind
from jetl.testing.memory import MemoryKV, capture
from jetl.testing.servers import NatsHandle
from jetl_extractor.handlers import RunSlots, make_router
from jetl_extractor.resend import Resend


class Row(BaseModel):
    id: int


@dataclass
class Layout:
    """A data folder with a secret in it, and a pipeline reading `inputs/*.jsonl` beside it."""

    inputs: Path
    good: Path
    secret: Path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    inputs, nats_dir = tmp_path / "inputs", tmp_path / "data" / "nats"
    inputs.mkdir()
    nats_dir.mkdir(parents=True)
    secret = nats_dir / "users.json"
    secret.write_text('{"operator": "hunter2-operator-password"}\n')
    good = inputs / "rows.jsonl"
    good.write_text('{"id": 1}\n{"id": 2}\n')
    register(
        [
            Pipeline(
                name="victim",
                extractors=[FileExtractor(str(inputs / "*.jsonl"))],
                loader=ConsoleLoader(),
                schema=Row,
            ),
            Pipeline(
                name="other", extractors=[FileExtractor(str(inputs / "*.jsonl"))], loader=ConsoleLoader(), schema=Row
            ),
        ]
    )
    return Layout(inputs, good, secret)


@pytest.fixture
def touched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Path]]]:
    """Every file the file extractor stats for its key ("key") or opens ("open"), resolved."""
    seen: list[tuple[str, Path]] = []

    def spy(what: str, fn: Any) -> Any:
        def wrapped(path: Path, *args: Any) -> Any:
            seen.append((what, Path(path).resolve()))
            return fn(path, *args)

        return wrapped

    monkeypatch.setattr(file_extractor, "_file_key", spy("key", file_extractor._file_key))
    monkeypatch.setattr(file_extractor, "_open", spy("open", file_extractor._open))
    monkeypatch.setattr(file_extractor, "_open_range", spy("open", file_extractor._open_range))
    yield seen


def key_of(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


async def deliver(subject: str, body: bytes, kv: MemoryKV | None = None) -> dict[Kind, list[bytes]]:
    """Deliver one message to the extractor on `subject` (in memory, with the state bucket `kv`); what it
    published, by stream."""
    ctx = make_context("extractor", JetlSettings())
    ctx.kv = kv  # type: ignore[assignment]
    slots = RunSlots(1, ack_wait=10)  # a run extracts in a slot beside the consume loop: wait for it to finish
    ctx.broker.include_router(make_router(ctx, slots))
    got = capture(ctx.broker, [Kind.RAW, Kind.EVENTS, Kind.DLQ, Kind.RUN])
    async with TestNatsBroker(ctx.broker) as br:
        await br.publish(body, subject, stream="JETL_RUNS")
        await slots.idle()
    got[Kind.RUN] = [b for b in got[Kind.RUN] if b != body]  # the delivered message itself
    return got


def work(spec: dict[str, Any], pipeline: str = "victim", cursor: dict[str, Any] | None = None) -> tuple[str, bytes]:
    w = PartitionWork(
        request=RunRequest(pipeline=pipeline, run_id=f"{pipeline}-r1"),
        partition="p0000",
        extractor=0,
        spec=spec,
        partitions=2,
        cursor=cursor,
    )
    return subjects.run_partition(pipeline, w.request.run_id, w.partition), w.model_dump_json().encode()


def failure(got: dict[Kind, list[bytes]]) -> str:
    events = [orjson.loads(e) for e in got[Kind.EVENTS]]
    assert [e["type"] for e in events] == ["run.failed"], events
    return str(events[0]["error"])


def forged_specs(layout: Layout) -> list[tuple[str, dict[str, Any]]]:
    link = layout.inputs / "link.jsonl"
    link.symlink_to(layout.secret)
    dotted = layout.inputs / ".." / "data" / "nats" / "users.json"
    return [
        ("the users file, key right", {"files": [[str(layout.secret), key_of(layout.secret)]]}),
        ("the users file, key wrong", {"files": [[str(layout.secret), "x:1:1"]]}),
        ("a .. path", {"files": [[str(dotted), key_of(layout.secret)]]}),
        ("a symlink out of the folder", {"files": [[str(link), key_of(link)]]}),
        (
            "a byte range of it",
            {"file": str(layout.secret), "key": key_of(layout.secret), "start": 0, "end": 10, "line": 1},
        ),
        (
            "a good file then the users file",
            {"files": [[str(layout.good), key_of(layout.good)], [str(layout.secret), "k"]]},
        ),
    ]


@pytest.mark.parametrize("case", range(6))
async def test_a_forged_partition_naming_a_file_outside_the_glob_is_refused_unread(
    layout: Layout, touched: list[tuple[str, Path]], case: int
) -> None:
    what, spec = forged_specs(layout)[case]
    got = await deliver(*work(spec))
    assert got[Kind.RAW] == [], what  # nothing of it published where every service reads
    error = failure(got)
    assert "refused" in error
    for leak in ("users", str(layout.secret), "hunter2", str(layout.secret.stat().st_size), "link.jsonl"):
        assert leak not in error, (what, error)
    assert layout.secret.resolve() not in {p for _, p in touched}, what  # never stat'ed for its key, never opened
    assert [p for what, p in touched if what == "open"] == [], "refused before any file is opened"


async def test_the_same_partition_naming_a_file_the_glob_lists_is_extracted(
    layout: Layout, touched: list[tuple[str, Path]]
) -> None:
    got = await deliver(*work({"files": [[str(layout.good), key_of(layout.good)]]}))
    assert len(got[Kind.RAW]) == 1 and b'{"id": 2}' in got[Kind.RAW][0]
    assert [orjson.loads(e)["type"] for e in got[Kind.EVENTS]] == ["batch.extracted", "partition.extracted"]


async def test_a_changed_file_fails_the_partition_without_telling_its_key(layout: Layout) -> None:
    spec = {"files": [[str(layout.good), key_of(layout.good).rsplit(":", 2)[0] + ":999:1"]]}
    got = await deliver(*work(spec))
    assert got[Kind.RAW] == []
    error = failure(got)
    assert "changed since" in error and ":999:1" not in error and f":{layout.good.stat().st_size}:" not in error


@pytest.mark.parametrize(
    "span",
    [(0, 10**9, 1), (-5, 5, 1), (5, 5, 1), ("0", "5", 1), (0, 5, 0)],
    ids=["past-the-end", "negative", "empty", "strings", "line-0"],
)
async def test_a_forged_byte_range_of_a_listed_file_is_refused(
    layout: Layout, touched: list[tuple[str, Path]], span: tuple[Any, Any, Any]
) -> None:
    start, end, line = span
    spec = {"file": str(layout.good), "key": key_of(layout.good), "start": start, "end": end, "line": line}
    got = await deliver(*work(spec))
    assert got[Kind.RAW] == []
    assert "refused" in failure(got)
    assert set(touched) <= {("key", layout.good.resolve())}  # stat'ed for its key at most, never opened


async def test_a_run_request_naming_another_pipeline_than_its_subject_is_dropped(layout: Layout) -> None:
    forged = RunRequest(pipeline="other", run_id="other-r1").model_dump_json().encode()
    got = await deliver(subjects.run_request("victim"), forged)
    assert got == {Kind.RAW: [], Kind.EVENTS: [], Kind.DLQ: [], Kind.RUN: []}  # nothing at all happened
    honest = await deliver(subjects.run_request("other"), forged)
    assert len(honest[Kind.RAW]) == 1  # the same body on its own subject runs


async def test_a_partition_on_another_runs_subject_is_dropped(layout: Layout, touched: list[tuple[str, Path]]) -> None:
    _, body = work({"files": [[str(layout.good), key_of(layout.good)]]})
    got = await deliver(subjects.run_partition("other", "victim-r1", "p0000"), body)
    assert got == {Kind.RAW: [], Kind.EVENTS: [], Kind.DLQ: [], Kind.RUN: []}
    assert touched == []


async def test_a_partition_starting_from_another_cursor_than_the_pipelines_is_refused(
    layout: Layout, touched: list[tuple[str, Path]]
) -> None:
    """Without the check, a forged item with no cursor would have a replica read again what earlier runs loaded."""
    kv = MemoryKV()
    stored = {"0": {"watermark": 1, "files": [key_of(layout.good)]}}
    await put_cursor(kv, "victim", stored)  # type: ignore[arg-type]
    spec = {"files": [[str(layout.good), key_of(layout.good)]]}
    got = await deliver(*work(spec, cursor=None), kv=kv)
    assert got[Kind.RAW] == [] and "another cursor" in failure(got)
    assert [w for w, _ in touched if w == "open"] == []
    honest = await deliver(*work(spec, cursor=stored), kv=kv)  # the control: the run's own cursor
    assert len(honest[Kind.RAW]) == 1


# -- redrive: a dead letter is taken only from its pipeline's own subject for its stage ---------------------------


def letter(stage: str, pipeline: str = "victim") -> DeadLetter:
    return DeadLetter(
        pipeline=pipeline,
        run_id=f"{pipeline}-r0",
        batch_id=f"{pipeline}-r0/000000",
        stage=stage,  # type: ignore[arg-type]
        reason="refused",
        error_type="RecordError",
        records=[{"index": None, "origin": None, "field": None, "message": "m", "record": {"id": 666}}],
    )


async def redrive(nats: NatsHandle, letters: list[tuple[str, bytes]]) -> tuple[BaseException | None, int]:
    """Publish `letters` (subject, body) to JETL_DLQ, redrive them as `victim`; the error, and what the raw and
    clean streams hold after."""
    settings = JetlSettings(nats=NatsSettings(url=nats.url))
    nc = await nats_py.connect(nats.url)
    js = nc.jetstream()
    seqs = [(await js.publish(subject, body)).seq for subject, body in letters]
    ctx = make_context("extractor", settings)
    await ctx.broker.connect()
    error: BaseException | None = None
    try:
        await Resend(
            ctx, RunRequest(pipeline="victim", run_id="victim-redrive1", redrive=seqs, trigger="redrive")
        ).run()
    except TerminalError as exc:
        error = exc
    finally:
        await ctx.broker.stop()
    sent = 0
    for kind in (Kind.RAW, Kind.CLEAN):
        info = await js.stream_info(subjects.stream_name(kind))
        sent += info.state.messages
    await nc.close()
    return error, sent


@pytest.mark.integration
async def test_a_redrive_refuses_a_load_letter_forged_on_the_transform_subject(
    layout: Layout, nats: NatsHandle
) -> None:
    forged = letter("load")
    error, sent = await redrive(nats, [(subjects.dlq("victim", "transform"), forged.to_json())])
    assert isinstance(error, TerminalError) and "subject" in str(error)
    assert sent == 0  # not one batch went out, raw or clean


@pytest.mark.integration
async def test_a_redrive_refuses_another_pipelines_letter_and_a_malformed_one(layout: Layout, nats: NatsHandle) -> None:
    error, sent = await redrive(nats, [(subjects.dlq("other", "load"), letter("load", "other").to_json())])
    assert isinstance(error, TerminalError) and "'other'" in str(error) and sent == 0
    error, sent = await redrive(nats, [(subjects.dlq("victim", "load"), b"{}")])
    assert isinstance(error, TerminalError) and "malformed" in str(error) and sent == 0


@pytest.mark.integration
async def test_a_redrive_takes_a_letter_from_its_own_subject(layout: Layout, nats: NatsHandle) -> None:
    error, sent = await redrive(nats, [(subjects.dlq("victim", "load"), letter("load").to_json())])
    assert error is None and sent == 1  # the control: the same letter, honestly published, is redriven
