"""Hostile messages against a running stack: four service processes over a real nats-server, attacked from a plain
nats-py client that publishes what no jetl component would. Each test makes one attempt and asserts both that it
was refused and that nothing happened: no file outside the loader's root, nothing deleted, no run settled, no cursor
moved, no alert sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats as nats_py
import orjson
import pytest

from jetl import subjects
from jetl.events import RunExtracted, RunFailed
from jetl.messages.wire import decode_batch
from jetl.ops.client import JetlClient
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.state import bucket, get_cursor, get_run
from jetl.testing.pipelines import file_pipeline
from jetl.testing.servers import nats_server
from jetl.testing.webhook import Hook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = file_pipeline("files")


@dataclass
class Running:
    """The stack under attack, and what its one good run left behind."""

    url: str
    root: Path
    data: Path
    run_id: str
    hook: Hook

    @property
    def settings(self) -> JetlSettings:
        return JetlSettings(nats=NatsSettings(url=self.url))

    def parts(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def loader_log(self) -> str:
        return (self.data / "logs" / "loader.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A stack with one completed run of `files` (three rows in `out/files/<run>/000000.jsonl`)."""
    tmp = tmp_path_factory.mktemp("forged")
    inputs, root, pipelines, data = tmp / "in", tmp / "deep" / "er" / "out", tmp / "pipelines", tmp / "data"
    inputs.mkdir()
    (inputs / "rows.jsonl").write_text('{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n{"id": 3, "name": "c"}\n')
    pipelines.mkdir()
    (pipelines / "files_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(root)))
    hook = Hook()
    with (
        nats_server(tmp / "nats") as server,
        Stack(data, pipelines, nats_url=server.url, extra_env={"JETL_ALERT_WEBHOOK_URL": hook.url}) as stack,
    ):

        async def good_run() -> str:
            async with JetlClient(JetlSettings(nats=NatsSettings(url=server.url))) as jc:
                req = await jc.request_run("files")
                state = await jc.wait("files", req.run_id, timeout=120)
                assert state.status == "completed" and state.loaded == 3
                return req.run_id

        running = Running(server.url, root, data, asyncio.run(good_run()), hook)
        yield running
        stack.check()
    hook.server.shutdown()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := probe():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def publish(url: str, subject: str, payload: bytes) -> None:
    """Publish as an outsider would: a plain nats-py client, straight into the stream."""
    nc = await nats_py.connect(url)
    try:
        await nc.jetstream().publish(subject, payload)
    finally:
        await nc.close()


async def ask(url: str, verb: str, body: bytes) -> dict[str, Any]:
    nc = await nats_py.connect(url)
    try:
        reply = await nc.request(subjects.control("loader", verb), body, timeout=10)
        return orjson.loads(reply.data)  # type: ignore[no-any-return]
    finally:
        await nc.close()


def envelope(**fields: Any) -> dict[str, Any]:
    return {"pipeline": "files", "seq": 0, "schema_name": "Row", "schema_hash": "x", "count": 1, **fields}


def test_a_forged_envelope_with_path_traversal_writes_nothing_outside_the_root(running: Running) -> None:
    run_id = "../../../../tmp/x"
    escape = (running.root / ".shadow" / run_id).resolve()
    assert not escape.is_relative_to(running.root.resolve()) and not escape.exists()
    before = running.parts()
    head = orjson.dumps(envelope(run_id=run_id, shadow=True))
    asyncio.run(publish(running.url, subjects.clean("files", "x"), head + b"\n" + b'[{"id": 9, "name": "evil"}]'))

    log = wait_for("the loader to refuse the envelope", lambda: "unreadable clean batch" in running.loader_log())
    assert log and "is not a valid subject token" in running.loader_log()
    assert not escape.exists()
    assert running.parts() == before


def test_a_forged_diff_with_traversal_or_naming_a_non_replay_run_deletes_nothing(running: Running) -> None:
    keep = running.root / ".shadow" / running.run_id / "keep.txt"  # a shadow folder the forgery would drop
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text("still here")
    outside = running.root.parent / "precious"
    outside.mkdir(exist_ok=True)
    before = running.parts()

    traversal = {"pipeline": "files", "run_id": "../../precious", "parent_run_id": running.run_id}
    reply = asyncio.run(ask(running.url, "diff", orjson.dumps(traversal)))
    assert reply["ok"] is False and reply["disposition"] == "terminal"
    assert "run_id" in reply["error"] and "subject token" in reply["error"]

    not_a_replay = {"pipeline": "files", "run_id": running.run_id, "parent_run_id": running.run_id}
    reply = asyncio.run(ask(running.url, "diff", orjson.dumps(not_a_replay)))
    assert reply["ok"] is False and "is not a replay run" in reply["error"]

    assert outside.is_dir() and keep.read_text() == "still here"
    assert running.parts() == before


def test_an_oversized_control_body_is_refused_unread(running: Running) -> None:
    keep = running.root / ".shadow" / running.run_id / "keep.txt"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text("still here")
    body = {"pipeline": "files", "run_id": running.run_id, "parent_run_id": running.run_id, "pad": "x" * 100_000}
    reply = asyncio.run(ask(running.url, "diff", orjson.dumps(body)))
    assert reply["ok"] is False and reply["disposition"] == "terminal"
    assert "bytes refused: the limit is" in reply["error"]
    assert keep.read_text() == "still here"


def test_a_forged_run_extracted_with_no_batches_settles_nothing(running: Running) -> None:
    async def attempt() -> tuple[Any, Any, Any]:
        nc = await nats_py.connect(running.url)
        try:
            kv = await bucket(nc)
            cursor = await get_cursor(kv, "files")
            forged = RunExtracted(pipeline="files", run_id="files-forged", batches=0, records=0, cursor={"files": []})
            await nc.jetstream().publish(subjects.events("files", "files-forged"), forged.model_dump_json().encode())
            for _ in range(150):  # until the tracker has folded it
                if await get_run(kv, "files", "files-forged") is not None:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # had the tracker settled it, it would have by now
            return cursor, await get_run(kv, "files", "files-forged"), await get_cursor(kv, "files")
        finally:
            await nc.close()

    cursor, state, after = asyncio.run(attempt())
    assert cursor and cursor["files"]  # the good run moved it: the input file is loaded
    assert state is not None and state.expected_batches == 0  # the tracker read it ...
    assert state.status != "completed"  # ... and did not settle it
    assert after == cursor  # the cursor did not move (to [] it would load everything again)


def test_a_forged_run_failed_sends_no_alert(running: Running) -> None:
    forged = RunFailed(pipeline="files", run_id="files-never", error="forged failure")
    asyncio.run(publish(running.url, subjects.events("files", "files-never"), forged.model_dump_json().encode()))

    async def folded() -> Any:
        nc = await nats_py.connect(running.url)
        try:
            return await get_run(await bucket(nc), "files", "files-never")
        finally:
            await nc.close()

    wait_for("the tracker to fold the forged event", lambda: asyncio.run(folded()))
    time.sleep(1.0)  # an alert is sent in the background right after the fold
    assert not [b for b in running.hook.bodies if b.get("run_id") == "files-never"]


def test_a_forged_supersedes_naming_an_unrelated_batch_deletes_no_rows(running: Running) -> None:
    before = {p: p.read_bytes() for p in running.parts()}
    victim = f"{running.run_id}/000000"
    assert any(p.parent.name == running.run_id for p in before)

    async def attempt() -> list[Any]:
        async with JetlClient(running.settings) as jc:
            # the good run's own envelope (RAW keeps it; CLEAN lets a batch go once the loader acked it): the
            # forgery is right in everything but what it supersedes
            last = await jc.conn.jetstream().get_last_msg("JETL_RAW", subjects.raw("files", running.run_id))
            real, _ = decode_batch(last.data or b"")
            forged = real.model_copy(update={"seq": 7, "count": 1, "supersedes": victim, "encoding": "json"})
            head = forged.model_dump_json().encode()
            await publish(
                running.url, subjects.clean("files", running.run_id), head + b"\n" + b'[{"id": 9, "name": "evil"}]'
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                letters = [dl for dl in await jc.dead_letters("files") if dl.batch_id == f"{running.run_id}/000007"]
                if letters:
                    return letters
                await asyncio.sleep(0.3)
            return []

    letters = asyncio.run(attempt())
    assert letters and "is not a replay" in letters[0].reason
    assert {p: p.read_bytes() for p in running.parts()} == before
