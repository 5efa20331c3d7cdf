"""A hostile client against a running stack started the way `jetl up` starts it (the embedded, authenticated
nats-server and the four services as processes). Each test makes one attempt and asserts that the server refused it
and that nothing changed; the last one shows a pipeline still runs to rows through the same stack.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from jetl import subjects
from jetl.access import Role
from jetl.bus import connect
from jetl.cli.demo import wait_ready
from jetl.messages.models import RunRequest
from jetl.ops.client import JetlClient
from jetl.settings import NatsSettings
from jetl.stack.embedded import USERS_FILE, Stack
from jetl.subjects import Kind
from jetl.testing.cli import jetl_up
from jetl.testing.pipelines import file_pipeline
from jetl.topology import require_deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = file_pipeline("items", batch_size=10)

ROWS = 25


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One running stack for the module, as `jetl up` starts it."""
    root = tmp_path_factory.mktemp("secure")
    inputs, pipelines = root / "in", root / "pipelines"
    inputs.mkdir()
    pipelines.mkdir()
    (inputs / "items.jsonl").write_text("".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in range(ROWS)))
    text = PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(root / "out"))
    (pipelines / "items_pipeline.py").write_text(text)
    with Stack(data_dir=root / "data", pipelines_dir=pipelines) as running:
        asyncio.run(wait_ready(running))
        yield running


class Attempt:
    """A nats-py connection that records the asynchronous errors the server sends (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def error_cb(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    async def connect_as(self, stack: Stack, role: Role) -> Client:
        assert stack.credentials is not None
        return await nats.connect(
            stack.nats_url,
            user=role,
            password=stack.credentials.password(role).get_secret_value(),
            error_cb=self.error_cb,
            allow_reconnect=False,
        )

    async def refused(self, what: str, timeout: float = 5.0) -> str:
        """The server's permission violation naming `what` (waits for it: the server answers asynchronously)."""
        for _ in range(int(timeout / 0.05)):
            found = [e for e in self.errors if "permissions violation" in e.lower() and what.lower() in e.lower()]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permissions violation for {what!r}; errors seen: {self.errors}")


async def last_seqs(stack: Stack) -> dict[str, int]:
    """Every jetl stream's last sequence: a refused publish leaves each where it was (a work queue's count would not
    show a message the extractor already took; its sequence would)."""
    nc = await connect(stack.operator)
    try:
        js = nc.jetstream()
        return {spec.name: (await js.stream_info(spec.name)).state.last_seq for spec in subjects.STREAMS.values()}
    finally:
        await nc.close()


def test_credentials_and_server_config_are_owner_only(stack: Stack) -> None:
    for path in (stack.data_dir / "nats" / USERS_FILE, stack.data_dir / "nats" / "nats.conf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("credentials", [{}, {"user": "operator", "password": "not-the-password"}])
async def test_a_client_without_the_right_credentials_is_refused(stack: Stack, credentials: dict[str, str]) -> None:
    before = await last_seqs(stack)
    with pytest.raises(Exception, match=r"(?i)authorization violation"):
        await nats.connect(stack.nats_url, allow_reconnect=False, connect_timeout=2, **credentials)
    assert await last_seqs(stack) == before


async def test_the_loader_cannot_request_a_run(stack: Stack) -> None:
    before = await last_seqs(stack)
    attempt = Attempt()
    nc = await attempt.connect_as(stack, "loader")
    subject = subjects.run_request("items")
    try:
        await nc.publish(subject, RunRequest(pipeline="items", run_id="items-forged").model_dump_json().encode())
        await nc.flush()
        await attempt.refused(f'Publish to "{subject}"')
    finally:
        await nc.close()
    assert await last_seqs(stack) == before  # nothing stored in JETL_RUNS (nor anywhere else)


async def test_an_extractor_cannot_answer_loader_control_verbs(stack: Stack) -> None:
    attempt = Attempt()
    nc = await attempt.connect_as(stack, "extractor")
    answered: list[Any] = []

    async def impostor(msg: Any) -> None:
        answered.append(msg.data)
        await msg.respond(b'{"ok": true, "result": {"forged": true}}')

    try:
        await nc.subscribe(subjects.control_pattern("loader"), cb=impostor)
        await nc.flush()
        await attempt.refused(f'Subscription to "{subjects.control_pattern("loader")}"')
        async with JetlClient(stack.client_settings()) as jc:
            counted = await jc.ask_loader("count", {"pipeline": "items"}, timeout=30)
    finally:
        await nc.close()
    assert answered == [] and "forged" not in counted  # the real loader answered, the impostor heard nothing


async def test_a_service_user_cannot_create_a_stream(stack: Stack) -> None:
    attempt = Attempt()
    nc = await attempt.connect_as(stack, "transformer")
    try:
        with pytest.raises(NatsTimeout):  # the server drops the request, so nobody answers it
            await nc.jetstream(timeout=2).add_stream(StreamConfig(name="EVIL", subjects=["evil.>"]))
        await attempt.refused('Publish to "$JS.API.STREAM.CREATE.EVIL"')
    finally:
        await nc.close()
    admin = await connect(stack.operator)
    try:
        with pytest.raises(NotFoundError):
            await admin.jetstream().stream_info("EVIL")
    finally:
        await admin.close()


async def test_a_service_user_cannot_delete_a_stream(stack: Stack) -> None:
    raw = subjects.stream_name(Kind.RAW)
    before = await last_seqs(stack)
    attempt = Attempt()
    nc = await attempt.connect_as(stack, "extractor")
    try:
        with pytest.raises(NatsTimeout):
            await nc.jetstream(timeout=2).delete_stream(raw)
        await attempt.refused(f'Publish to "$JS.API.STREAM.DELETE.{raw}"')
    finally:
        await nc.close()
    assert await last_seqs(stack) == before  # JETL_RAW is still there, with everything it held


async def test_a_pipeline_runs_to_rows_through_the_authenticated_stack(stack: Stack) -> None:
    async with JetlClient(stack.client_settings()) as jc:
        req = await jc.request_run("items")
        state = await jc.wait("items", req.run_id, timeout=120)
    assert state.status == "completed" and state.loaded == ROWS and state.reconciles
    out = stack.data_dir.parent / "out"
    rows = [json.loads(line) for part in out.rglob("*.jsonl") for line in part.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(ROWS))


def test_jetl_up_refuses_an_unauthenticated_client(tmp_path: Path) -> None:
    """The command itself, as a user runs it: its server admits the operator from users.json and nobody else."""
    (tmp_path / "pipelines").mkdir()
    with jetl_up(data_dir=tmp_path / "data", pipelines_dir=tmp_path / "pipelines", until="nats://") as seen:
        found = re.search(r"nats://127\.0\.0\.1:\d+", seen)
        assert found is not None, seen
        url = found.group(0)
        users = json.loads((tmp_path / "data" / "nats" / USERS_FILE).read_text())

        async def attempt() -> None:
            with pytest.raises(Exception, match=r"(?i)authorization violation"):
                await nats.connect(url, allow_reconnect=False, connect_timeout=2)
            nc = await connect(NatsSettings(url=url, user="operator", password=users["operator"]))
            try:
                await require_deployment(nc)  # `jetl up` deployed, as the operator
            finally:
                await nc.close()

        asyncio.run(attempt())
