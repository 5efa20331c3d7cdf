"""A stage's in_progress() beats: a short ack wait brings a dead worker's messages back fast, and a live worker's
long batch is never redelivered while it works on it (jetl.runtime.service.keep_alive)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from jetl.bus import connect
from jetl.runtime.service import keep_alive
from jetl.settings import NatsSettings
from jetl.testing.servers import NatsHandle


class FakeMsg:
    """Counts the beats it gets."""

    def __init__(self, is_acked: bool = False) -> None:
        self.beats = 0
        self.is_acked = is_acked

    async def in_progress(self) -> None:
        self.beats += 1


async def test_unsettled_messages_are_beaten_and_settled_ones_are_not() -> None:
    msgs = [FakeMsg(), FakeMsg(), FakeMsg(), FakeMsg(is_acked=True)]
    done = 0
    async with keep_alive(msgs, 1.5, lambda: done):  # a beat every 0.5 s
        await asyncio.sleep(0.8)  # the first message in hand, the next two waiting their turn: all beaten
        done = 1
        before = msgs[0].beats
        await asyncio.sleep(0.8)
    assert before >= 1 and msgs[0].beats == before  # settled: no more beats
    assert msgs[1].beats >= 2 and msgs[2].beats >= 2
    assert msgs[3].beats == 0  # acked or nak'ed already: a beat would only push its retry back
    stopped = [m.beats for m in msgs]
    await asyncio.sleep(0.7)
    assert [m.beats for m in msgs] == stopped  # the beat task ends with the block


@pytest.mark.integration
async def test_a_batch_held_past_the_ack_wait_by_a_live_worker_is_not_redelivered(nats: NatsHandle) -> None:
    nc = await connect(NatsSettings(url=nats.url))
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="KA", subjects=["ka.x"]))
        await js.add_consumer("KA", ConsumerConfig(durable_name="w", ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0))
        await js.publish("ka.x", b"work")
        sub = await js.pull_subscribe_bind("w", stream="KA")
        (msg,) = await sub.fetch(1, timeout=5)
        async with keep_alive([msg], 1.0, lambda: 0):
            await asyncio.sleep(3.5)  # three and a half ack waits of work
            with pytest.raises(TimeoutError):
                await sub.fetch(1, timeout=0.5)  # nothing came back while the worker was alive
        await asyncio.sleep(1.6)  # the worker "died" holding it: it comes back after one ack wait
        (again,) = await sub.fetch(1, timeout=5)
        assert again.data == b"work" and again.metadata.num_delivered == 2
        await again.ack()
    finally:
        await nc.close()
