"""The tracker's shards: which scheduler replica folds which runs.

JETL_EVENTS stores every event with a shard token, a hash of its pipeline and run (`jetl.subjects.events_transform`),
and each of the `TRACKER_SHARDS` shards has its own durable, `tracker-<k>`. A replica pulls only from the shards it
holds a lease on: the state key `shard.<k>`, which it took with a create (or, from a holder gone silent, a
compare-and-set on the revision it watched stand still for a lease period) and renews with a compare-and-set every
third of one. So two replicas never fold the same run, and the run key's compare-and-set stays the guard for the
moment a shard moves (a paused holder that lost its lease stops pulling at its next renewal; what it had fetched and
not acked comes back to the new holder after the ack wait, and its batch ledgers are read afresh, `jetl.state.Ledgers`).

Expiry is judged without comparing clocks: a lease is stale when its revision has not moved for `shard_lease_seconds`
as this replica's monotonic clock measures it. Shares are even: each replica holds at most its fair share,
ceil(shards / live replicas), where a replica is live when its heartbeat (`svc.scheduler.<instance>`) is recent and
no lease of its has stood still for a lease period, and gives back the excess when a replica joins; when one dies, its
leases go stale, and the others take its shards (without waiting for its heartbeat to age as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.js.api import Header, StatusCode
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from nats.nuid import NUID

from jetl import subjects
from jetl.errors import TransientError
from jetl.logging import get_logger
from jetl.runtime.service import HEARTBEAT_S, ServiceContext, keep_alive
from jetl.state import Ledgers, watch_values
from jetl.subjects import TRACKER_DURABLES, TRACKER_SHARDS, Kind, StateKey, state_keys

log = get_logger("jetl.tracker")

STATUS, DESCRIPTION = Header.STATUS.value, Header.DESCRIPTION.value
STATUS_IDLE = StatusCode.CONTROL_MESSAGE.value
STATUS_ENDED = {StatusCode.REQUEST_TIMEOUT.value, StatusCode.NO_MESSAGES.value, StatusCode.CONFLICT.value}
_NUID = NUID()


def nuid() -> str:
    """A unique inbox token."""
    return _NUID.next().decode()


Fold = Callable[[list[Any], Ledgers], Awaitable[None]]
"""Folds one fetch of a shard's events, with that shard's ledgers."""


def lease_key(k: int) -> str:
    """The state key of shard `k`'s lease (`shard.<k>`)."""
    return state_keys(StateKey.SHARD, str(k))


def fair_share(live: int) -> int:
    """The most shards one of `live` replicas holds."""
    return math.ceil(TRACKER_SHARDS / max(1, live))


class Shards:
    """The shards this replica holds, each with its pull loop, balanced every third of a lease period."""

    def __init__(self, ctx: ServiceContext, fold: Fold, *, lease_s: float, fetch_batch: int, fetch_wait: float) -> None:
        self.ctx = ctx
        self.fold = fold
        self.lease_s = lease_s
        self.fetch_batch = fetch_batch
        self.fetch_wait = fetch_wait
        self.held: dict[int, tuple[int, asyncio.Task[None]]] = {}
        """Shard -> (its lease's revision as this replica wrote it, its pull loop)."""
        self._seen: dict[int, tuple[int, float]] = {}
        """Another replica's lease -> (its revision, when this replica first saw that revision, monotonic)."""
        self._silent: dict[str, float] = {}
        """Replicas whose leases stood still for a lease period -> their heartbeat's `at` then (`live`)."""

    @property
    def key_ttl(self) -> float:
        """A lease key outlives its last renewal by ten lease periods (every key but a cursor has a TTL)."""
        return 10 * self.lease_s

    @property
    def me(self) -> bytes:
        return orjson.dumps({"instance": self.ctx.instance})

    async def run(self) -> None:
        """Balance for ever (a failed round is logged and tried again)."""
        while True:
            try:
                await self.balance()
            except Exception as exc:  # the server away: the leases held are renewed at the next round, or lost
                log.warning("shard balance failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.lease_s / 3)

    async def stop(self) -> None:
        """Stop pulling and give every lease back (a clean stop: the others take the shards at once)."""
        for k in sorted(self.held):
            await self._release(k)

    async def balance(self) -> None:
        """Renew the leases held, give back what is over the fair share, take stale or free shards up to it."""
        kv = self.ctx.kv
        if kv is None:
            return
        for k in sorted(self.held):
            revision, _ = self.held[k]
            try:
                renewed = await kv.update(lease_key(k), self.me, last=revision, msg_ttl=self.key_ttl)
                self.held[k] = (renewed, self.held[k][1])
            except KeyWrongLastSequenceError:  # paused past the lease: another replica holds it now
                log.warning("shard lease lost", shard=k)
                await self._stop_pulling(k)
        now = time.monotonic()
        leases = {k: await self._watch(kv, k, now) for k in range(TRACKER_SHARDS) if k not in self.held}
        silent = {holder for _, stale, holder in leases.values() if stale and holder is not None}
        fair = fair_share(await self.live(kv, silent))
        for k in sorted(self.held, reverse=True)[: max(0, len(self.held) - fair)]:
            await self._release(k)
        for k in self._order():
            if len(self.held) >= fair:
                break
            if k in self.held:
                continue
            entry, stale, _ = leases[k]
            taken = await self._take(kv, k, entry, stale)
            if taken is not None:
                self.held[k] = (taken, asyncio.create_task(self._pull(k)))
                self.ctx.bound.add(subjects.tracker_shard(k))
                log.info("shard taken", shard=k, held=sorted(self.held))

    def _order(self) -> list[int]:
        """Shards in an order of this replica's own (replicas starting together try different shards first)."""
        start = hash(self.ctx.instance) % TRACKER_SHARDS
        return [(start + i) % TRACKER_SHARDS for i in range(TRACKER_SHARDS)]

    async def live(self, kv: KeyValue, silent: set[str] | frozenset[str] = frozenset()) -> int:
        """Scheduler replicas alive: a heartbeat in the last three beats (this one counts, written or not), but not one
        whose leases were found standing still for a lease period (`silent`, remembered with the beat it had then)
        until it beats again: a SIGKILLed replica's last heartbeat stays fresh for up to three beats, and counting it
        kept its successor (or the others) at a share that left some of its shards unpulled until that beat aged,
        after its leases had gone stale. A paused replica that comes back beats again and counts once more."""
        beats = await watch_values(kv, state_keys(StateKey.SVC, "scheduler", "*"))
        beating: dict[str, float] = {}
        for raw in beats.values():
            with contextlib.suppress(Exception):
                beat = orjson.loads(raw)
                beating[str(beat.get("instance"))] = float(beat.get("at", 0))
        fresh = time.time() - 3 * HEARTBEAT_S
        for instance in silent:
            self._silent.setdefault(instance, beating.get(instance, 0.0))
        for instance, at in list(self._silent.items()):
            if at < fresh or beating.get(instance, 0.0) > at:  # its beat aged out (not live anyway), or it beat again
                del self._silent[instance]
        alive = {i for i, at in beating.items() if at >= fresh and i not in self._silent}
        return len(alive | {self.ctx.instance})

    async def _watch(self, kv: KeyValue, k: int, now: float) -> tuple[Any, bool, str | None]:
        """Shard `k`'s lease (held by another replica; None: free), whether it is stale, and its holder's instance.

        The lease's revision is noted every round, whether or not this replica has room to take it, so the time it
        has stood still is known the moment room comes; it is stale once it has stood still for a lease period (its
        holder stopped renewing: killed, paused, cut off)."""
        try:
            entry = await kv.get(lease_key(k))
        except KeyNotFoundError:  # never held, or given back
            self._seen.pop(k, None)
            return None, False, None
        assert entry.revision is not None
        seen = self._seen.get(k)
        if seen is None or seen[0] != entry.revision:
            self._seen[k] = (entry.revision, now)
            return entry, False, None
        if now - seen[1] < self.lease_s:
            return entry, False, None
        try:
            holder: str | None = str(orjson.loads(entry.value or b"{}")["instance"])
        except Exception:  # not a lease this version wrote: its shard is taken over as stale all the same
            holder = None
        return entry, True, holder

    async def _take(self, kv: KeyValue, k: int, entry: Any, stale: bool) -> int | None:
        """Shard `k`'s lease for this replica if it is free (`entry` None) or stale (as `_watch` read it this round):
        its new revision, else None."""
        key = lease_key(k)
        if entry is None:
            with contextlib.suppress(KeyWrongLastSequenceError):  # another replica created it first
                return await kv.create(key, self.me, msg_ttl=self.key_ttl)
            return None
        if not stale:
            return None
        with contextlib.suppress(KeyWrongLastSequenceError):  # its holder renewed it, or another replica took it
            revision = await kv.update(key, self.me, last=entry.revision, msg_ttl=self.key_ttl)
            log.warning("stale shard lease taken over", shard=k, holder=(entry.value or b"").decode(errors="replace"))
            return revision
        return None

    async def _release(self, k: int) -> None:
        revision, _ = self.held[k]
        await self._stop_pulling(k)
        kv = self.ctx.kv
        if kv is not None:
            with contextlib.suppress(Exception):  # not given back: another replica takes it once it is stale
                await kv.delete(lease_key(k), last=revision)
        log.info("shard given back", shard=k, held=sorted(self.held))

    async def _stop_pulling(self, k: int) -> None:
        _, task = self.held.pop(k)
        self.ctx.bound.discard(subjects.tracker_shard(k))
        task.cancel()  # between fetches or mid-fold: what it did not ack comes back after the ack wait
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _pull(self, k: int) -> None:
        """Take shard `k`'s events as they come and fold what has come each time, with ledgers of this holding's
        own."""
        ledgers = Ledgers()
        ack_wait = self.ctx.settings.nats.ack_wait
        while True:
            try:
                async with Pull(
                    self.ctx.broker.connection, TRACKER_DURABLES[k], self.fetch_batch, self.fetch_wait
                ) as p:
                    while True:
                        msgs = await p.next()
                        async with keep_alive(msgs, ack_wait, lambda: 0):
                            await self.fold(msgs, ledgers)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not deployed yet, or the server away: tried again shortly
                log.warning("shard pull failed", shard=k, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)


class Pull:
    """A shard durable's events as they come: one pull request always open (`batch` events, expiring after
    `wait` s, then asked again), its events gathered by a callback, and each `next()` hands over what has come.

    nats-py's `fetch` was two thirds of the tracker's client time: it waits for each message of a batch with a
    timer of its own (`asyncio.wait_for`), and once a shard is idle it waits out its timeout for a batch to fill
    (a run.completed up to that late). Here a message costs an append, and an event is folded as soon as it is in.
    Only this replica pulls from the durable (it holds its lease), so what is still in flight when it lets go comes
    back to the next holder after the ack wait.
    """

    def __init__(self, nc: Any, durable: str, batch: int, wait: float) -> None:
        self.nc, self.batch, self.wait = nc, batch, wait
        self.next_subject = subjects.consumer_next(Kind.EVENTS, durable)
        self.inbox = f"{subjects.inbox_prefix('scheduler')}.{nuid()}"
        self.came: list[Any] = []
        self.ready = asyncio.Event()
        self.owed = 0
        """Events the open request may still bring (0: no request open)."""
        self.refused = ""
        self.sub: Any = None

    async def __aenter__(self) -> Pull:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_message)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()

    async def _on_message(self, msg: Any) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            self.came.append(msg)
            self.owed -= 1
        elif status == STATUS_IDLE:  # a heartbeat (none is asked for)
            return
        elif status in STATUS_ENDED:  # the request expired (or found nothing): ask again
            self.owed = 0
        else:  # e.g. 409, the consumer deleted: the pull loop backs off and binds again
            self.refused = f"{status} {msg.headers.get(DESCRIPTION, '')}"
            self.owed = 0
        self.ready.set()

    async def next(self) -> list[Any]:
        """What has come since the last call: at least one event, waiting for it if none has."""
        while not self.came:
            if self.refused:
                raise TransientError(f"the server refused a pull of {self.next_subject}: {self.refused}")
            if self.owed <= 0:
                self.owed = self.batch
                request = orjson.dumps({"batch": self.batch, "expires": int(self.wait * 1e9)})
                await self.nc.publish(self.next_subject, request, reply=self.inbox)
            try:
                await asyncio.wait_for(self.ready.wait(), self.wait + 5.0)
            except TimeoutError:  # not even its expiry came back: the request was lost (the server went away)
                self.owed = 0
            self.ready.clear()
        came, self.came = self.came, []
        return came
