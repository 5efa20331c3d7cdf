"""Webhook alerts: retried on network errors, 429 and 5xx, not on other 4xx; one per episode across replicas."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import BaseModel

from jetl import ConsoleLoader, Cron, FileExtractor, Pipeline
from jetl.bus import connect
from jetl.settings import NatsSettings
from jetl.state import RunMark, bucket, last_ok_key
from jetl.testing.servers import NatsHandle
from jetl_scheduler import alerts
from jetl_scheduler.alerts import Alerter, claim, post
from jetl_scheduler.settings import SchedulerSettings


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "RETRY_BASE_S", 0.01)


def transport(responses: list[int | Exception], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        r = responses.pop(0)
        if isinstance(r, Exception):
            raise r
        return httpx.Response(r)

    return httpx.MockTransport(handle)


async def test_post_retries_transient_failures_until_the_hook_takes_it() -> None:
    seen: list[httpx.Request] = []
    errors: list[int | Exception] = [httpx.ConnectError("refused"), 503, 429, 200]
    ok = await post("http://hook", {"kind": "x"}, retries=4, transport=transport(errors, seen))
    assert ok and len(seen) == 4 and seen[-1].read() == b'{"kind":"x"}'


async def test_post_gives_up_after_its_retries_and_never_retries_a_client_error() -> None:
    seen: list[httpx.Request] = []
    assert not await post("http://hook", {}, retries=3, transport=transport([500, 500, 500, 500], seen))
    assert len(seen) == 3
    seen.clear()
    assert not await post("http://hook", {}, retries=3, transport=transport([404, 200], seen))
    assert len(seen) == 1


def test_no_webhook_means_no_alert() -> None:
    assert not Alerter(SchedulerSettings()).enabled
    assert not Alerter(SchedulerSettings(alert_webhook_url="")).enabled  # type: ignore[arg-type]


class Row(BaseModel):
    id: int


@pytest.mark.integration
async def test_one_alert_per_episode_across_replicas(nats: NatsHandle) -> None:
    nc = await connect(NatsSettings(url=nats.url))
    try:
        kv = await bucket(nc)
        wins = await asyncio.gather(*(claim(kv, "alert.p.failed", "run-1") for _ in range(5)))
        assert sum(wins) == 1
        assert not await claim(kv, "alert.p.failed", "run-1")
        assert await claim(kv, "alert.p.failed", "run-2")  # a new episode alerts again

        seen: list[httpx.Request] = []
        settings = SchedulerSettings(alert_webhook_url="http://hook/x")  # type: ignore[arg-type]
        replicas = [Alerter(settings, transport(list[int | Exception]([200] * 5), seen)) for _ in range(2)]
        p = Pipeline(
            name="hourly",
            extractors=[FileExtractor("/nonexistent")],
            loader=ConsoleLoader(),
            schema=Row,
            schedule=Cron("0 * * * *"),
        )
        now = datetime.now(UTC)
        await kv.put(
            last_ok_key("hourly"), RunMark(run_id="hourly-1", at=now - timedelta(hours=3)).model_dump_json().encode()
        )
        stale = await asyncio.gather(*(r.check_stale(kv, [p], now) for r in replicas))
        assert stale == [["hourly"], ["hourly"]] and len(seen) == 1  # both see it, one tells
        await asyncio.gather(*(r.check_stale(kv, [p], now) for r in replicas))
        assert len(seen) == 1  # the same episode is not alerted twice
        await kv.put(
            last_ok_key("hourly"), RunMark(run_id="hourly-2", at=now - timedelta(minutes=5)).model_dump_json().encode()
        )
        assert await replicas[0].check_stale(kv, [p], now) == []  # fresh again
    finally:
        await nc.close()
