"""The ledger kept per batch: the run state stays the same size whatever the number of batches, settlement stays
exact under redelivery and under a delivery that stopped between its writes, and the state keys expire while
cursors do not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetl.events import BatchExtracted, BatchLoaded, BatchTransformed, Event, RunExtracted, RunRequested
from jetl.projection import RunState, fold_batch, fold_run
from jetl.state import apply, batch_key, get_batch, get_cursor, get_run, put_cursor, run_key
from jetl.testing.memory import MemoryKV

P, R = "big", "big-1"


def base() -> dict[str, Any]:
    return {"pipeline": P, "run_id": R, "service": "test"}


def batch_events(seq: int, records: int = 10) -> list[Event]:
    ids = {**base(), "batch_id": f"{R}/{seq:06d}", "seq": seq}
    return [
        BatchExtracted(**ids, records=records),
        BatchTransformed(**ids, records_in=records, records_out=records - 1, filtered=1),
        BatchLoaded(**ids, records=records - 1),
    ]


async def test_the_run_state_written_per_event_does_not_grow_with_the_batches() -> None:
    kv = MemoryKV()
    await apply(kv, RunRequested(**base()))  # type: ignore[arg-type]
    sizes: dict[int, int] = {}
    for seq in range(10_000):
        for ev in batch_events(seq):
            await apply(kv, ev)  # type: ignore[arg-type]
        if seq + 1 in (10, 1_000, 10_000):
            sizes[seq + 1] = len(kv.data[run_key(P, R)].value)
    run_writes = kv.writes["run"]
    # 10,000 batches are counted in the same few hundred bytes as 10: what grows is the totals' digits (ten
    # numbers, one digit each per tenfold), nothing per batch. Every event writes the run key twice at most (count
    # it with the batch pending, then clear it): linear, not quadratic
    assert sizes[10] < 1024 and sizes[10_000] - sizes[1_000] <= 10 and sizes[10_000] - sizes[10] <= 30, sizes
    assert max(run_writes) <= max(run_writes[:60]) + 30  # the largest write, with a batch pending, too
    assert len(run_writes) <= 1 + 2 * 30_000
    assert len(kv.writes["batch"]) == 30_000
    state = await get_run(kv, P, R)  # type: ignore[arg-type]
    assert state is not None and state.pending == {}
    assert state.counts() == {
        "extracted": 100_000,
        "loaded": 90_000,
        "rejected": 0,
        "filtered": 10_000,
        "batches": 10_000,
    }
    await apply(kv, RunExtracted(**base(), batches=10_000, records=100_000))  # type: ignore[arg-type]
    state = await get_run(kv, P, R)  # type: ignore[arg-type]
    assert state is not None and state.settled and state.reconciles


@pytest.mark.slow
def test_a_million_batches_settle_exactly_in_constant_state() -> None:
    """The fold the tracker runs per event, over a million batches: totals only, so nothing grows with the run."""
    state = fold_run(None, RunRequested(**base()))
    state = fold_run(state, RunExtracted(**base(), batches=1_000_000, records=2_000_000))
    start = len(state.model_dump_json())
    # the events of one batch, reused: the totals depend on what a batch counts, not on which batch it is
    ids = {**base(), "batch_id": f"{R}/000000", "seq": 0}
    extracted, loaded = BatchExtracted(**ids, records=2), BatchLoaded(**ids, records=2)
    tally = state.tally
    for seq in range(1_000_000):
        b = fold_batch(None, extracted)
        tally.add(None, b)
        tally.add(b, fold_batch(b, loaded))
        if seq == 999_998:
            assert not state.settled  # one batch still on its way
    assert state.settled and state.reconciles
    assert state.counts()["extracted"] == 2_000_000 and state.counts()["loaded"] == 2_000_000
    assert len(state.model_dump_json()) - start <= 60  # the totals' digits, nothing per batch


async def test_a_redelivered_batch_event_counts_once() -> None:
    kv = MemoryKV()
    events = batch_events(0) + batch_events(1)
    for ev in events + events[::-1] + events:  # every event seen three times, in both orders
        await apply(kv, ev)  # type: ignore[arg-type]
    state = await apply(kv, RunExtracted(**base(), batches=2, records=20))  # type: ignore[arg-type]
    assert state.counts() == {"extracted": 20, "loaded": 18, "rejected": 0, "filtered": 2, "batches": 2}
    assert state.settled and state.reconciles


async def test_a_delivery_that_stopped_between_its_writes_is_finished_by_its_redelivery_and_counted_once() -> None:
    kv = MemoryKV()
    first, transformed, loaded = batch_events(0)
    await apply(kv, first)  # type: ignore[arg-type]
    kv.fail_batch_writes = 1
    with pytest.raises(ConnectionError):
        await apply(kv, transformed)  # type: ignore[arg-type]
    state = await get_run(kv, P, R)  # type: ignore[arg-type]
    assert state is not None and list(state.pending) == [batch_key(P, R, f"{R}/000000")]  # counted, key not written
    assert state.counts()["filtered"] == 1
    await apply(kv, transformed)  # type: ignore[arg-type] # the redelivery
    state = await get_run(kv, P, R)  # type: ignore[arg-type]
    assert state is not None and state.pending == {} and state.counts()["filtered"] == 1
    stored = await get_batch(kv, P, R, f"{R}/000000")  # type: ignore[arg-type]
    assert stored is not None and stored.transformed == 9
    # and when the batch's next event comes before the redelivery, it finishes the write and folds on top of it
    kv.fail_batch_writes = 1
    with pytest.raises(ConnectionError):
        await apply(kv, loaded)  # type: ignore[arg-type]
    await apply(kv, RunExtracted(**base(), batches=1, records=10))  # type: ignore[arg-type]
    await apply(kv, loaded)  # type: ignore[arg-type]
    state = await get_run(kv, P, R)  # type: ignore[arg-type]
    assert state is not None and state.pending == {} and state.settled and state.reconciles
    assert state.counts() == {"extracted": 10, "loaded": 9, "rejected": 0, "filtered": 1, "batches": 1}


async def test_two_trackers_folding_one_batch_at_once_lose_nothing() -> None:
    kv = MemoryKV()
    events = [ev for seq in range(20) for ev in batch_events(seq)]
    await asyncio.gather(*(apply(kv, ev) for ev in events))  # type: ignore[arg-type]
    state = await apply(kv, RunExtracted(**base(), batches=20, records=200))  # type: ignore[arg-type]
    assert state.settled and state.reconciles and state.counts()["loaded"] == 180


async def test_run_and_batch_keys_expire_and_cursors_never_do() -> None:
    kv = MemoryKV()
    for ev in batch_events(0):
        await apply(kv, ev, ttl=3600)  # type: ignore[arg-type]
    await put_cursor(kv, P, {"value": 1})  # type: ignore[arg-type]
    assert kv.ttls[run_key(P, R)] == 3600 and kv.ttls[batch_key(P, R, f"{R}/000000")] == 3600
    assert kv.ttls[f"cursor.{P}"] is None


@contextlib.asynccontextmanager
async def real_bucket(url: str) -> AsyncIterator[Any]:
    """The state bucket of a fresh deployment on a real server."""
    from jetl.bus import connect
    from jetl.settings import NatsSettings
    from jetl.state import bucket
    from jetl.topology import declare

    nc = await connect(NatsSettings(url=url))
    try:
        await declare(nc, NatsSettings(url=url))
        yield await bucket(nc)
    finally:
        await nc.close()


@pytest.mark.integration
async def test_the_real_bucket_expires_a_run_key_and_keeps_the_cursor(nats: Any) -> None:
    async with real_bucket(nats.url) as kv:
        for ev in batch_events(0):
            await apply(kv, ev, ttl=1)
        await put_cursor(kv, P, {"value": 1})
        assert isinstance(await get_run(kv, P, R), RunState)
        for _ in range(50):
            if await get_run(kv, P, R) is None and await get_batch(kv, P, R, f"{R}/000000") is None:
                break
            await asyncio.sleep(0.2)
        assert await get_run(kv, P, R) is None  # expired with its batch
        assert await get_batch(kv, P, R, f"{R}/000000") is None
        assert await get_cursor(kv, P) == {"value": 1}  # cursors never expire


async def test_a_finished_runs_batch_keys_fold_into_a_compact_summary_that_later_events_still_count_against() -> None:
    from jetl.events import RunCompleted
    from jetl.state import compact, load_batches

    kv = MemoryKV()
    await apply(kv, RunRequested(**base()))  # type: ignore[arg-type]
    for seq in range(2_000):
        for ev in batch_events(seq):
            await apply(kv, ev)  # type: ignore[arg-type]
    await apply(kv, RunExtracted(**base(), batches=2_000, records=20_000))  # type: ignore[arg-type]
    state = await apply(kv, RunCompleted(**base(), extracted=20_000, loaded=18_000, rejected=0, filtered=2_000))  # type: ignore[arg-type]
    ledgers_before = sum(len(e.value) for k, e in kv.data.items() if k.startswith("batch."))
    before = dict((await load_batches(kv, (await get_run(kv, P, R)).model_copy())).batches)  # type: ignore[arg-type,union-attr]

    assert await compact(kv, state) == 2_000  # type: ignore[arg-type]
    assert not [k for k in kv.data if k.startswith("batch.")]
    summary = sum(len(e.value) for k, e in kv.data.items() if k.startswith("sum."))
    assert summary * 20 < ledgers_before, (summary, ledgers_before)  # 2,000 ledgers in a few bytes each
    assert await compact(kv, state) == 0  # type: ignore[arg-type] # once
    after = await get_run(kv, P, R)  # type: ignore[arg-type]
    assert after is not None and after.summary == 1
    assert (await load_batches(kv, after.model_copy())).batches == before  # type: ignore[arg-type]
    assert await get_batch(kv, P, R, f"{R}/001999") == before[f"{R}/001999"]  # type: ignore[arg-type]

    for ev in batch_events(7):  # a late redelivery counts nothing again
        await apply(kv, ev)  # type: ignore[arg-type]
    again = await get_run(kv, P, R)  # type: ignore[arg-type]
    assert again is not None and again.counts() == state.counts() and again.reconciles


@pytest.mark.integration
async def test_the_real_bucket_keeps_a_summary_in_place_of_the_batch_keys(nats: Any) -> None:
    from jetl.events import RunCompleted
    from jetl.state import bucket_keys, compact, load_batches

    async with real_bucket(nats.url) as kv:
        await apply(kv, RunRequested(**base()))
        for seq in range(30):
            for ev in batch_events(seq):
                await apply(kv, ev)
        await apply(kv, RunExtracted(**base(), batches=30, records=300))
        done = RunCompleted(**base(), extracted=300, loaded=270, rejected=0, filtered=30)
        state = await apply(kv, done)
        assert await compact(kv, state) == 30
        assert [k for k in await bucket_keys(kv, f"batch.{P}.{R}.>") if await get_batch_raw(kv, k)] == []
        for ev in batch_events(3):  # a redelivery after the summary: its key comes back, counted once
            await apply(kv, ev)
        after = await get_run(kv, P, R)
        assert after is not None and after.counts() == state.counts() and after.summary == 1
        assert len((await load_batches(kv, after)).batches) == 30


async def get_batch_raw(kv: Any, key: str) -> bytes | None:
    from nats.js.errors import KeyDeletedError, KeyNotFoundError

    try:
        return (await kv.get(key)).value or None  # type: ignore[no-any-return]
    except (KeyNotFoundError, KeyDeletedError):
        return None
