"""The pieces of running on a NATS cluster that need no server: node configuration, the seed list, the stack's
options, and publishes that wait out a stream's leader election."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import APIError, NoStreamResponseError

from jetl import bus
from jetl.bus import Bus
from jetl.errors import IN_PROCESS as IN_PROCESS_CODE
from jetl.errors import ConfigError
from jetl.events import RunRequested
from jetl.stack.cluster import NatsCluster
from jetl.stack.embedded import Stack


def test_every_node_routes_to_the_others_and_the_seed_list_names_them_all(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path, size=3)
    for n in cluster.nodes:
        n.allocate()
    confs = [n.config(cluster.name, cluster._routes(i), 8) for i, n in enumerate(cluster.nodes)]
    assert [n.name for n in cluster.nodes] == ["n1", "n2", "n3"]
    for i, conf in enumerate(confs):
        assert f'server_name: "n{i + 1}"' in conf
        others = [n.route for j, n in enumerate(cluster.nodes) if j != i]
        assert all(r in conf for r in others) and cluster.nodes[i].route not in conf
        assert "jetstream" in conf and f"n{i + 1}/js" in conf  # a store of its own
    assert cluster.url.split(",") == [n.url for n in cluster.nodes]
    assert len({(n.port, n.cluster_port, n.monitor_port) for n in cluster.nodes}) == 3


def test_bad_cluster_options_fail_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no NATS URL"):
        Stack(data_dir=tmp_path, pipelines_dir=tmp_path, nats_url="nats://127.0.0.1:1", nats_cluster=3)
    with pytest.raises(ConfigError, match="at least one node"):
        NatsCluster(tmp_path, size=0)
    with pytest.raises(ConfigError, match="2 hosts for 3 nodes"):
        NatsCluster(tmp_path, size=3, hosts=["127.0.0.1", "127.0.0.2"])


class LeaderlessBroker:
    """A broker whose stream answers no publish for the first `silent` tries, as while a leader is elected."""

    def __init__(self, silent: int, error: Callable[[], Exception] = NoStreamResponseError) -> None:
        self.silent = silent
        self.error = error
        self.tries = 0

    async def publish(self, body: bytes, subject: str, **kw: Any) -> Any:
        self.tries += 1
        if self.tries <= self.silent:
            raise self.error()
        return type("Ack", (), {"duplicate": False})()


def _event() -> RunRequested:
    return RunRequested(pipeline="p", run_id="p-r1", service="cli")


IN_PROCESS = functools.partial(
    APIError, code=409, err_code=IN_PROCESS_CODE, description="duplicate message id is in process"
)


@pytest.mark.parametrize("error", [*bus.LEADERLESS, IN_PROCESS])
async def test_a_publish_waits_out_a_leader_election(
    monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception]
) -> None:
    monkeypatch.setattr(bus, "LEADERLESS_RETRY_S", 0.01)
    broker = LeaderlessBroker(silent=3, error=error)
    await Bus(broker, "scheduler").event(_event())  # type: ignore[arg-type]
    assert broker.tries == 4


async def test_a_stream_that_stays_leaderless_fails_the_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "LEADERLESS_RETRY_S", 0.01)
    monkeypatch.setattr(bus, "LEADERLESS_S", 0.05)
    broker = LeaderlessBroker(silent=10**6)
    with pytest.raises(NoStreamResponseError):
        await Bus(broker, "scheduler").event(_event())  # type: ignore[arg-type]
    assert broker.tries > 1


class StorelessBroker(LeaderlessBroker):
    """A stream whose leader answers its info but not publishes, as a server whose store filled its disk."""

    @property
    def connection(self) -> Any:
        info = type("Info", (), {"cluster": None})()

        async def stream_info(name: str) -> Any:
            return info

        return type(
            "Conn", (), {"jetstream": lambda self: type("JS", (), {"stream_info": staticmethod(stream_info)})()}
        )()


async def test_a_stream_that_stores_nothing_pauses_the_publish_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bus, "LEADERLESS_RETRY_S", 0.01)
    monkeypatch.setattr(bus, "LEADERLESS_S", 0.05)
    monkeypatch.setattr(bus, "UNANSWERED_S", 0.02)
    broker = StorelessBroker(silent=40)
    b = Bus(broker, "scheduler", full_wait=3600)  # type: ignore[arg-type]
    seen: list[str] = []

    async def watch() -> None:
        while broker.tries <= broker.silent:
            if b.paused is not None:
                seen.append(str(b.paused))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    await b.event(_event())  # past LEADERLESS_S: it has a leader, so it waits instead of failing
    await watcher
    assert broker.tries == 41 and b.paused is None
    assert seen and "has not answered publishes" in seen[-1] and "restart nats-server" in seen[-1]
    with pytest.raises(NoStreamResponseError):  # a client that may not wait (full_wait 0) fails as before
        await Bus(StorelessBroker(silent=10**6), "scheduler").event(_event())  # type: ignore[arg-type]
