"""`jetl dlq list` and `jetl logs` read as they print and stop at their limit; the log shipper is one task over a
bounded queue that drops (and counts) rather than block."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from jetl import subjects
from jetl.bus import connect
from jetl.cli import app
from jetl.messages.deadletter import DeadLetter
from jetl.runtime.service import LogShipper
from jetl.settings import JetlSettings, NatsSettings
from jetl.testing.servers import NatsHandle
from jetl.topology import declare


async def _seed(url: str, letters: int, lines: int) -> None:
    nc = await connect(NatsSettings(url=url))
    try:
        await declare(nc, NatsSettings(url=url))
        js = nc.jetstream()
        for i in range(letters):
            dl = DeadLetter(
                pipeline="p",
                run_id=f"r{i % 2}",
                batch_id=f"r{i % 2}/{i:06d}",
                stage="transform",
                reason=f"bad {i}",
                error_type="RecordError",
                records=[{"index": 0, "origin": f"in.jsonl:{i}", "field": "x", "message": f"bad {i}"}],
            )
            await js.publish(subjects.dlq("p", "transform"), dl.model_dump_json().encode())
        order = list(range(lines))
        random.Random(7).shuffle(order)  # services ship concurrently: the stream is not in time order
        for i in order:
            line = {"timestamp": f"2026-11-28T10:00:{i // 100:02d}.{i % 100:02d}Z", "event": f"line {i}"}
            await js.publish(subjects.logs("p", "r0"), orjson.dumps(line | {"run_id": "r0", "pipeline": "p"}))
    finally:
        await nc.close()


@pytest.mark.integration
def test_dlq_list_reads_only_up_to_its_limit(nats: NatsHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETL_NATS__URL", nats.url)
    asyncio.run(_seed(nats.url, letters=40, lines=0))
    import jetl.ops.client

    read = 0
    original = jetl.ops.client.read_stream

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal read
        async for m in original(*args, **kwargs):
            read += 1
            yield m

    monkeypatch.setattr(jetl.ops.client, "read_stream", counting)
    result = CliRunner().invoke(app, ["dlq", "list", "p", "--run", "r1", "--limit", "3", "--json"])
    assert result.exit_code == 0, result.stdout
    rows = json.loads(result.stdout)
    assert [r["message"] for r in rows] == ["bad 1", "bad 3", "bad 5"]  # the run's first three, oldest first
    assert read <= 8  # stopped once the limit was met (and one past it, to tell there is more), not all forty
    table = CliRunner().invoke(app, ["dlq", "list", "p", "--limit", "5"])
    assert "the first 5 record(s); more are kept" in table.stdout


@pytest.mark.integration
async def test_logs_stream_in_time_order_and_stop_at_the_limit(nats: NatsHandle) -> None:
    from jetl.ops.client import JetlClient
    from jetl.ops.logs import read_logs

    await _seed(nats.url, letters=0, lines=300)
    jc = await JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))).__aenter__()
    got: list[dict[str, Any]] = []
    read: list[int] = []
    n = await read_logs(
        jc,
        "r0",
        "p",
        follow=False,
        follow_seconds=None,
        on_line=got.append,
        progress=lambda d, t: read.append(d),
        limit=7,
    )
    assert n == 7 and max(read) == 7  # seven read, seven printed: the other 293 were never fetched
    everything: list[dict[str, Any]] = []
    assert await read_logs(jc, "r0", None, follow=False, follow_seconds=None, on_line=everything.append) == 300
    assert [x["event"] for x in everything] == [f"line {i}" for i in range(300)]  # time order, from a shuffled log
    await jc.__aexit__(None, None, None)


class _SlowConnection:
    """A connection whose publishes wait until released, as on a stalled NATS."""

    is_closed = False

    def __init__(self) -> None:
        self.published: list[str] = []
        self.release = asyncio.Event()

    async def publish(self, subject: str, data: bytes) -> None:
        await self.release.wait()
        self.published.append(orjson.loads(data)["event"])


async def test_the_log_shipper_is_one_task_that_drops_and_counts_when_full() -> None:
    nc = _SlowConnection()
    counted: list[int] = []
    shipper = LogShipper(nc, maxsize=10, dropped=counted.append)
    task = shipper.start()
    tasks_before = len(asyncio.all_tasks())
    for i in range(100):  # a burst while NATS is stalled: logging returns at once every time
        shipper.offer({"run_id": "r0", "pipeline": "p", "event": f"line {i}"})
    shipper.offer({"event": "no run: not shipped"})
    assert len(asyncio.all_tasks()) == tasks_before  # no task per line
    await asyncio.sleep(0)
    assert shipper.dropped == sum(counted) >= 89  # ten queued (and one being sent); the rest dropped, counted
    nc.release.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(nc.published) + shipper.dropped == 100:
            break
    assert nc.published[:10] == [f"line {i}" for i in range(10)] and len(nc.published) + shipper.dropped == 100
    task.cancel()


def test_metric_labels_are_kind_and_pipeline_never_run() -> None:
    from types import SimpleNamespace

    from jetl.metrics import _bounded_provider
    from jetl.subjects import metric_label

    assert metric_label(subjects.raw("orders", "orders-20261125T0000Z")) == "jetl.raw.orders"
    assert metric_label(subjects.events("orders", "orders-20261125T0000Z", "loader")) == "jetl.events.orders"
    assert metric_label(subjects.dlq("orders", "load")) == "jetl.dlq.orders.load"
    assert metric_label(subjects.run_request("orders")) == "jetl.run.orders"
    assert metric_label("_INBOX.abc123.7") == "_INBOX"
    provider = _bounded_provider(None)  # what FastStream's middleware asks for each message it sees
    msg = SimpleNamespace(raw_message=SimpleNamespace(subject=subjects.clean("orders", "r-1")), body=b"xy")
    assert provider.get_consume_attrs_from_message(msg)["destination_name"] == "jetl.clean.orders"
    cmd = SimpleNamespace(destination=subjects.logs("orders", "r-2"))
    assert provider.get_publish_destination_name_from_cmd(cmd) == "jetl.logs.orders"
