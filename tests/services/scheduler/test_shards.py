"""Shard takeover (`jetl_scheduler.shards`): a scheduler replica that was SIGKILLed leaves a heartbeat that still
looks fresh for up to three beats. Its successor takes every one of its shards once their leases have stood still for
a lease period; counting the dead replica as live by its heartbeat alone kept the successor at half of them. A replica
that was only paused beats again, and counts again."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from jetl.bucket import bucket
from jetl.bus import connect
from jetl.settings import JetlSettings, NatsSettings
from jetl.state import heartbeat_key, put_expiring
from jetl.subjects import TRACKER_SHARDS
from jetl.testing.servers import NatsHandle
from jetl_scheduler.shards import Shards, lease_key

pytestmark = [pytest.mark.integration]

DEAD = "elsewhere:1"
LEASE_S = 0.5


class NoPull(Shards):
    """Shards without the pull loops (only the leases are under test)."""

    async def _pull(self, k: int) -> None:
        await asyncio.Event().wait()


async def test_a_killed_replicas_shards_are_all_taken_while_its_heartbeat_is_still_fresh(nats: NatsHandle) -> None:
    nc = await connect(NatsSettings(url=nats.url))
    try:
        kv = await bucket(nc)

        # the dead replica's last heartbeat, dated an hour ahead so it looks fresh however long the test takes: only
        # its leases stand still
        body = orjson.dumps({"service": "scheduler", "instance": DEAD, "at": time.time() + 3600})
        await put_expiring(kv, heartbeat_key("scheduler", DEAD), body, 3600)
        for k in range(TRACKER_SHARDS):
            await kv.create(lease_key(k), orjson.dumps({"instance": DEAD}))
        ctx: Any = SimpleNamespace(kv=kv, instance="successor:2", bound=set(), settings=JetlSettings())
        shards = NoPull(ctx, lambda msgs, ledgers: asyncio.sleep(0), lease_s=LEASE_S, fetch_batch=1, fetch_wait=1.0)
        rounds = 0
        try:
            while len(shards.held) < TRACKER_SHARDS:
                rounds += 1
                assert rounds < 200, f"held {sorted(shards.held)} after {rounds} rounds"
                await shards.balance()
                await asyncio.sleep(LEASE_S / 3)  # the rounds' pace, as Shards.run keeps it
            for _ in range(3):
                await shards.balance()  # and it keeps them: the dead replica does not count as live
                assert sorted(shards.held) == list(range(TRACKER_SHARDS))
            for k in range(TRACKER_SHARDS):
                entry = await kv.get(lease_key(k))
                assert orjson.loads(entry.value or b"{}") == {"instance": "successor:2"}
            # had it only been paused, it beats again: it counts as live once more, and half the shards are given back
            body = orjson.dumps({"service": "scheduler", "instance": DEAD, "at": time.time() + 7200})
            await put_expiring(kv, heartbeat_key("scheduler", DEAD), body, 3600)
            await shards.balance()
            assert len(shards.held) == TRACKER_SHARDS // 2
        finally:
            for _, task in shards.held.values():
                task.cancel()
    finally:
        await nc.close()
