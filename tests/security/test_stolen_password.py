"""An attacker holding one service's real password, against a running stack under the generated permissions
(`jetl up`'s embedded, authenticated nats-server and the four services as processes). Each attack is refused by
NATS, or not believed by the tracker, and changes nothing: no message stored, no state key written, no run, no row,
no alert. The last two show that a redrive works under these permissions, and that a forged dead letter does not
make one write rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig

from jetl import subjects
from jetl.access import Role
from jetl.bus import connect
from jetl.cli.demo import wait_ready
from jetl.events import BatchLoaded, RunCompleted, RunExtracted, RunFailed, RunRequested, _Event
from jetl.messages import DeadLetter, RunRequest
from jetl.ops.client import JetlClient
from jetl.stack.embedded import Stack
from jetl.state import bucket, bucket_keys
from jetl.subjects import STREAMS, Kind
from jetl.testing.webhook import Hook

from .conftest import Attempt, items_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 5
QUIET = {"JETL_LOGS", "JETL_ADVISORIES"}
"""Streams that change without any attack (log lines, the server's advisories): not compared."""


@dataclass
class Running:
    stack: Stack
    hook: Hook
    run_id: str

    @property
    def out(self) -> Path:
        return self.stack.data_dir.parent / "out"

    def rows(self) -> list[dict[str, Any]]:
        """The rows loaded, as the records were (jetl's own columns, the version, left out)."""
        return sorted(
            (
                {k: v for k, v in json.loads(line).items() if not k.startswith("_jetl")}
                for p in self.out.rglob("*.jsonl")
                for line in p.read_text().splitlines()
            ),
            key=lambda r: r["id"],
        )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A stack with one completed run of `items` (its cursor moved, its rows written)."""
    root = tmp_path_factory.mktemp("stolen")
    pipelines = items_pipeline(root, ROWS)
    hook = Hook()
    with Stack(data_dir=root / "data", pipelines_dir=pipelines, extra_env={"JETL_ALERT_WEBHOOK_URL": hook.url}) as st:
        asyncio.run(wait_ready(st))

        async def good_run() -> str:
            async with JetlClient(st.client_settings()) as jc:
                req = await jc.request_run("items")
                state = await jc.wait("items", req.run_id, timeout=120)
                assert state.status == "completed" and state.loaded == ROWS
                return req.run_id

        yield Running(st, hook, asyncio.run(good_run()))
        st.check()
    hook.close()


async def snapshot(stack: Stack) -> dict[str, Any]:
    """Everything an attack could change: each stream's last sequence and consumers, and every state key's revision
    but the heartbeats (they beat on their own), and who holds each of the tracker's shard leases."""
    nc = await connect(stack.operator)
    try:
        js = nc.jetstream()
        streams = {}
        for spec in STREAMS.values():
            if spec.name not in QUIET:
                info = await js.stream_info(spec.name)
                # the operator's own readers are ordered consumers that linger a while: not counted
                consumers = {c.name for c in await js.consumers_info(spec.name) if not c.config.flow_control}
                streams[spec.name] = (info.state.last_seq, consumers)
        kv = await bucket(nc)
        keys = [k for k in await bucket_keys(kv) if not k.startswith(f"{subjects.StateKey.SVC}.")]
        # a shard lease is renewed on its own: what an attack could change is who holds it
        revisions = {
            k: e.value if k.startswith(f"{subjects.StateKey.SHARD}.") else e.revision
            for k in keys
            if (e := await kv.get(k)) is not None
        }
        return {"streams": streams, "state": revisions}
    finally:
        await nc.close()


async def tracker_caught_up(stack: Stack) -> None:
    """Wait until the tracker has acked every event on the log (so what it would have done, it has done): no shard
    has an event not yet delivered or not yet acked."""
    nc = await connect(stack.operator)
    try:
        js = nc.jetstream()
        events = subjects.stream_name(Kind.EVENTS)
        for _ in range(600):
            infos = [await js.consumer_info(events, d) for d in subjects.TRACKER_DURABLES]
            if not any(i.num_pending or i.num_ack_pending for i in infos):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the tracker did not catch up with the event log")
    finally:
        await nc.close()


async def run_of(stack: Stack, run_id: str) -> Any:
    async with JetlClient(stack.client_settings()) as jc:
        return {r.run_id: r for r in await jc.runs("items")}.get(run_id)


async def refused_publish(stack: Stack, role: Role, subject: str, body: bytes = b"{}") -> None:
    """Publish as `role` and wait for the server's refusal."""
    attempt = Attempt()
    nc = await attempt.connect_as(stack, role)
    try:
        await nc.publish(subject, body)
        await nc.flush()
        await attempt.refused(f'Publish to "{subject}"')
    finally:
        await nc.close()


def test_a_service_hears_no_other_roles_replies(running: Running) -> None:
    async def attempt() -> tuple[list[bytes], dict[str, Any]]:
        heard: list[bytes] = []

        async def listen(msg: Any) -> None:
            heard.append(msg.data)

        a = Attempt()
        nc = await a.connect_as(running.stack, "loader")
        try:
            for inbox in (f"{subjects.INBOX_ROOT}.>", subjects.inbox("extractor"), subjects.inbox("scheduler")):
                await nc.subscribe(inbox, cb=listen)
                await nc.flush()
                await a.refused(f'Subscription to "{inbox}"')
            async with JetlClient(running.stack.client_settings()) as jc:  # replies flow meanwhile
                counted = await jc.ask_loader("count", {"pipeline": "items"}, timeout=30)
        finally:
            await nc.close()
        return heard, counted

    heard, counted = asyncio.run(attempt())
    assert heard == [] and counted  # the operator got its answer; the loader heard none of it


def test_the_loader_cannot_put_a_run_request_into_the_extractors_pull_inbox(running: Running) -> None:
    before = asyncio.run(snapshot(running.stack))
    forged = RunRequest(pipeline="items", run_id="items-forced").model_dump_json().encode()
    for subject in (
        f"{subjects.inbox_prefix('extractor')}.abcdef.1",
        subjects.run_request("items"),
        subjects.run_partition("items", "items-forced", "p0"),
    ):
        asyncio.run(refused_publish(running.stack, "loader", subject, forged))
    asyncio.run(tracker_caught_up(running.stack))
    assert asyncio.run(snapshot(running.stack)) == before


FORGERIES: list[tuple[Role, Role, _Event]] = [
    (
        "extractor",
        "loader",
        BatchLoaded(pipeline="items", run_id="items-f1", batch_id="items-f1/000000", seq=0, records=1),
    ),
    (
        "extractor",
        "scheduler",
        RunCompleted(pipeline="items", run_id="items-f2", extracted=0, loaded=0, rejected=0, filtered=0),
    ),
    ("loader", "extractor", RunExtracted(pipeline="items", run_id="items-f3", batches=0, records=0)),
    ("loader", "scheduler", RunRequested(pipeline="items", run_id="items-f4")),
    ("transformer", "operator", RunRequested(pipeline="items", run_id="items-f5")),
    ("loader", "scheduler", RunFailed(pipeline="items", run_id="items-f6", error="<script>x</script>")),
]


@pytest.mark.parametrize(("role", "as_role", "event"), FORGERIES, ids=lambda v: getattr(v, "type", v))
def test_a_service_cannot_say_another_roles_events(running: Running, role: Role, as_role: Role, event: _Event) -> None:
    before = asyncio.run(snapshot(running.stack))
    subject = subjects.events(event.pipeline, event.run_id, as_role)
    asyncio.run(refused_publish(running.stack, role, subject, event.model_dump_json().encode()))
    assert asyncio.run(snapshot(running.stack)) == before


def test_events_a_role_may_not_say_are_not_believed(running: Running) -> None:
    """Said on the role's own subjects, which NATS lets it use: the tracker folds none of them, so no run exists,
    none completes, no cursor moves and no alert goes out."""
    before = asyncio.run(snapshot(running.stack))
    said: list[tuple[Role, _Event]] = [
        ("extractor", RunRequested(pipeline="items", run_id="items-n1")),
        (
            "extractor",
            RunCompleted(
                pipeline="items",
                run_id=running.run_id + "x",
                extracted=0,
                loaded=0,
                rejected=0,
                filtered=0,
                cursor={"files": []},
            ),
        ),
        ("loader", RunFailed(pipeline="items", run_id=running.run_id, error="attacker text: wire me money")),
        ("loader", RunFailed(pipeline="items", run_id="items-n2", error="attacker text: wire me money")),
    ]

    async def attempt() -> None:
        for role, ev in said:
            a = Attempt()
            nc = await a.connect_as(running.stack, role)
            try:
                await nc.jetstream().publish(
                    subjects.events(ev.pipeline, ev.run_id, role), ev.model_dump_json().encode()
                )
            finally:
                await nc.close()
        await tracker_caught_up(running.stack)

    asyncio.run(attempt())
    after = asyncio.run(snapshot(running.stack))
    # a run.failed is the loader's to say: of a run never requested it is folded (the log is the log) and acts on
    # nothing; of a completed run it changes nothing
    assert after["state"].keys() - before["state"].keys() == {"run.items.items-n2"}
    good = f"run.items.{running.run_id}"  # the run.failed said of it is on the log, and counted as seen ...
    assert {k: v for k, v in after["state"].items() if k in before["state"] and k != good} == {
        k: v for k, v in before["state"].items() if k != good
    }
    state = asyncio.run(run_of(running.stack, running.run_id))  # ... but the run is as it was
    assert state.status == "completed" and state.error is None and state.loaded == ROWS
    assert asyncio.run(run_of(running.stack, "items-n2")).requested_at is None
    assert not [b for b in running.hook.bodies if "wire me money" in json.dumps(b)]


@pytest.mark.parametrize("role", ["loader", "extractor", "transformer"])
def test_a_service_cannot_move_a_cursor_or_write_run_state(running: Running, role: Role) -> None:
    before = asyncio.run(snapshot(running.stack))
    for key in ("cursor.items", f"run.items.{running.run_id}", "ok.items", f"svc.scheduler.{role}"):
        asyncio.run(refused_publish(running.stack, role, f"$KV.{subjects.STATE_BUCKET}.{key}", b'{"value": "2100"}'))
    assert asyncio.run(snapshot(running.stack)) == before


def test_a_service_reads_no_stream_it_does_not_consume_and_creates_no_consumer(running: Running) -> None:
    before = asyncio.run(snapshot(running.stack))

    async def attempt() -> None:
        a = Attempt()
        nc = await a.connect_as(running.stack, "loader")
        try:
            js = nc.jetstream(timeout=2)
            for kind in (Kind.RAW, Kind.DLQ):
                stream = subjects.stream_name(kind)
                with pytest.raises(NatsTimeout):
                    await js.get_msg(stream, 1)
                await a.refused(f'Publish to "$JS.API.STREAM.MSG.GET.{stream}"')
                with pytest.raises(NatsTimeout):  # an ephemeral pull consumer that never acks would pin the stream
                    await js.add_consumer(stream, ConsumerConfig(inactive_threshold=3600))
                await a.refused(f'Publish to "$JS.API.CONSUMER.CREATE.{stream}"')
            clean = subjects.stream_name(Kind.CLEAN)
            push = ConsumerConfig(name="evil", deliver_subject=subjects.control("extractor", "health"))
            with pytest.raises(NatsTimeout):  # a push consumer delivering the stream to another service's verb
                await js.add_consumer(clean, push)
            await a.refused(f'Publish to "$JS.API.CONSUMER.CREATE.{clean}.evil"')
        finally:
            await nc.close()

    asyncio.run(attempt())
    assert asyncio.run(snapshot(running.stack)) == before  # no consumer on any stream, nothing read out


def _letter(run_id: str, stage: Any, record: dict[str, Any]) -> DeadLetter:
    return DeadLetter(
        pipeline="items",
        run_id=run_id,
        batch_id=f"{run_id}/000000",
        stage=stage,
        reason="x",
        error_type="LoadError",
        records=[{"index": 0, "record": record}],
    )


async def letter_then_redrive(running: Running, letter: DeadLetter) -> Any:
    """The loader dead-letters `letter` at its own stage, then an operator redrives the letters of its run."""
    a = Attempt()
    nc = await a.connect_as(running.stack, "loader")
    try:
        await nc.jetstream().publish(subjects.dlq("items", "load"), letter.to_json())
    finally:
        await nc.close()
    async with JetlClient(running.stack.client_settings()) as jc:
        return await jc.redrive("items", run_id=letter.run_id, timeout=120)


def test_a_forged_dead_letter_makes_a_redrive_write_no_rows(running: Running) -> None:
    rows = running.rows()
    # another stage's dead letter: refused
    asyncio.run(
        refused_publish(
            running.stack,
            "loader",
            subjects.dlq("items", "transform"),
            _letter("items-x1", "transform", {"id": 666, "name": "evil"}).to_json(),
        )
    )

    # on its own stage's subject, naming another stage: stored, but read as malformed, so no redrive takes it (the
    # operator's client sends none; an extractor given it would refuse it, test_message_content)
    state = asyncio.run(letter_then_redrive(running, _letter("items-x2", "transform", {"id": 667, "name": "evil"})))
    assert state is None or (state.status == "failed" and "transform" in (state.error or ""))
    assert running.rows() == rows


def test_a_redrive_of_records_the_loader_rejected_loads_them(running: Running) -> None:
    """What the loader dead-letters goes back through the transformer (the only role that may publish clean batches),
    unchanged, and is loaded."""

    state = asyncio.run(letter_then_redrive(running, _letter("items-rj", "load", {"id": 100, "name": "back"})))
    assert state is not None and state.status == "completed" and state.loaded == 1, state
    assert {"id": 100, "name": "back"} in running.rows()


def test_a_refused_command_names_the_permission_and_the_user(running: Running, tmp_path: Path) -> None:
    """A command run as a role that may not do it is told so (exit 2), never sent to look for an outage (exit 3)."""
    from typer.testing import CliRunner

    from jetl.cli import app

    assert running.stack.credentials is not None
    env = {
        "JETL_NATS__URL": running.stack.nats_url,
        "JETL_NATS__USER": "loader",
        "JETL_NATS__PASSWORD": running.stack.credentials.password("loader").get_secret_value(),
        "JETL_DATA_DIR": str(tmp_path),  # no stack context of its own
    }
    result = CliRunner().invoke(app, ["audit", running.run_id], env=env)
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert "NATS refused user 'loader' permission to publish to \"$JS.API.CONSUMER.CREATE.JETL_EVENTS" in output
    assert "is NATS running" not in output and output.lower().count("permissions violation") == 0
