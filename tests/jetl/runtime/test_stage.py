"""The one ack rule (`jetl.runtime.stage.settle` over `decide_ack`): ack on success, nak with backoff on a transient
error until the last delivery, dead-letter then term on a terminal one; compare-and-set contention is transient; and
the tracker's fold of many events at once agrees with folding them one by one."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.errors import KeyWrongLastSequenceError

from jetl.errors import Contention, RecordError, TransientError, classify
from jetl.events import BatchExtracted, BatchLoaded, BatchRejected, BatchTransformed, Event, RunExtracted, RunRequested
from jetl.projection import fold
from jetl.runtime.stage import decide_ack, settle
from jetl.state import Ledgers, apply, apply_many, compare_and_set, get_batch, get_run, load_batches
from jetl.testing.memory import MemoryKV
from jetl.topology import MAX_DELIVER


@dataclass
class Meta:
    num_delivered: int


@dataclass
class Msg:
    """A JetStream message as far as the ack rule touches it."""

    delivered: int = 1
    said: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def metadata(self) -> Meta:
        return Meta(self.delivered)

    async def ack(self) -> None:
        self.said.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.said.append(("nak", delay))

    async def term(self) -> None:
        self.said.append(("term", None))


class Letters:
    def __init__(self, fail: bool = False) -> None:
        self.got: list[BaseException] = []
        self.fail = fail

    async def __call__(self, exc: BaseException) -> None:
        if self.fail:
            raise ConnectionError("the DLQ is away")
        self.got.append(exc)


async def test_success_acks_and_dead_letters_nothing() -> None:
    msg, letters = Msg(), Letters()
    async with settle(msg, letters):
        pass
    assert msg.said == [("ack", None)] and letters.got == []


async def test_a_transient_error_naks_with_a_delay_until_the_last_delivery_then_dead_letters() -> None:
    early, letters = Msg(delivered=1), Letters()
    async with settle(early, letters):
        raise TimeoutError("the destination is slow")
    assert [s for s, _ in early.said] == ["nak"] and letters.got == []
    delay = early.said[0][1]
    assert delay is not None and 0 <= delay <= 0.5
    last = Msg(delivered=MAX_DELIVER)
    async with settle(last, letters):
        raise TimeoutError("still slow")
    assert last.said == [("term", None)] and [str(e) for e in letters.got] == ["still slow"]


async def test_a_terminal_error_is_dead_lettered_then_termed_at_once() -> None:
    msg, letters = Msg(delivered=1), Letters()
    async with settle(msg, letters):
        raise RecordError(pipeline="p")
    assert msg.said == [("term", None)] and len(letters.got) == 1


async def test_a_dead_letter_that_cannot_be_written_naks_the_message_never_drops_it() -> None:
    msg = Msg(delivered=1)
    assert await decide_ack(msg, ValueError("bug"), Letters(fail=True)) == "nak"
    assert [s for s, _ in msg.said] == ["nak"]


async def test_settle_decides_every_message_of_a_group_and_lets_a_cancellation_through() -> None:
    msgs = [Msg(), Msg(delivered=2)]
    async with settle(msgs, Letters()):
        raise Contention("lost to other writers")
    assert [m.said[0][0] for m in msgs] == ["nak", "nak"]
    untouched = Msg()
    with pytest.raises(asyncio.CancelledError):
        async with settle(untouched, Letters()):
            raise asyncio.CancelledError
    assert untouched.said == []


async def test_compare_and_set_contention_is_transient_and_other_errors_pass_through() -> None:
    tries = 0

    async def always_beaten() -> None:
        nonlocal tries
        tries += 1
        raise KeyWrongLastSequenceError

    with pytest.raises(Contention) as lost:
        await compare_and_set(always_beaten, "run.p.r", tries=3)
    assert tries == 3 and classify(lost.value) == "transient" and isinstance(lost.value, TransientError)

    async def broken() -> None:
        raise ValueError("not a race")

    with pytest.raises(ValueError):
        await compare_and_set(broken, "run.p.r")


P, R = "p", "r"


def _events(seq: int) -> list[Event]:
    ids: dict[str, Any] = {"pipeline": P, "run_id": R, "service": "t", "batch_id": f"{R}/{seq:06d}", "seq": seq}
    return [
        BatchExtracted(**ids, records=10),
        BatchTransformed(**ids, records_in=10, records_out=8, rejected=1, filtered=1),
        BatchLoaded(**ids, records=8) if seq % 4 else BatchRejected(**ids, stage="load", records=8, reason="x"),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=30),
    redeliver=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    defer=st.sampled_from([0, 1, 3, 256]),
)
def test_folding_many_events_at_once_agrees_with_folding_them_one_by_one(
    order: random.Random, cuts: list[int], redeliver: list[int], defer: int
) -> None:
    """The tracker's fast path (a fetch of events, one state write per run) against the reference fold in memory:
    any grouping, any interleaving of batches (each batch's events in order), redeliveries included."""
    per_batch = [_events(seq) for seq in range(8)]
    stream: list[Event] = [RunRequested(pipeline=P, run_id=R, service="t")]
    while any(per_batch):
        pick = order.choice([b for b in per_batch if b])
        stream.append(pick.pop(0))
    stream += [stream[i % len(stream)] for i in redeliver]  # delivered again, late
    stream.append(RunExtracted(pipeline=P, run_id=R, service="t", batches=8, records=80))

    reference = None
    for ev in stream:
        reference = fold(reference, ev)
    assert reference is not None

    async def fast() -> None:
        kv, ledgers, i = MemoryKV(), Ledgers(), 0
        for n in cuts * (len(stream) // len(cuts) + 1):
            if i >= len(stream):
                break
            await apply_many(kv, stream[i : i + n], ledgers=ledgers, defer=defer)  # type: ignore[arg-type]
            i += n
        state = await get_run(kv, P, R)  # type: ignore[arg-type]
        assert state is not None
        assert all(b.outcome == "pending" for b in state.pending.values())  # only unsettled ones wait there
        assert state.counts() == reference.counts() and state.tally == reference.tally
        assert state.settled == reference.settled and state.reconciles == reference.reconciles
        stored = {i: await get_batch(kv, P, R, i) for i in reference.batches}  # type: ignore[arg-type]
        assert stored == reference.batches
        assert (await load_batches(kv, state)).batches == reference.batches  # type: ignore[arg-type]

    asyncio.run(fast())


async def test_a_second_writer_between_two_fetches_is_noticed_and_nothing_is_counted_twice() -> None:
    """A replica's remembered ledgers are dropped when someone else wrote the run since: the other writer's events
    are neither lost nor counted again."""
    kv, mine = MemoryKV(), Ledgers()
    first, transformed, loaded = _events(1)
    await apply_many(kv, [RunRequested(pipeline=P, run_id=R, service="t"), first], ledgers=mine)  # type: ignore[arg-type]
    await apply(kv, transformed)  # type: ignore[arg-type] # another replica, with no memory of its own
    await apply_many(kv, [transformed, loaded], ledgers=mine)  # type: ignore[arg-type] # one of them redelivered
    state = await apply(kv, RunExtracted(pipeline=P, run_id=R, service="t", batches=1, records=10))  # type: ignore[arg-type]
    assert state.settled and state.reconciles
    assert state.counts() == {"extracted": 10, "loaded": 8, "rejected": 1, "filtered": 1, "batches": 1}


class DyingKV(MemoryKV):
    """A bucket whose writer dies at its n-th write (the tracker SIGKILLed mid-fold), and every write after."""

    def __init__(self, die_at: int) -> None:
        super().__init__()
        self.die_at, self.n = die_at, 0

    def _store(self, key: str, value: bytes, msg_ttl: float | None) -> int:
        self.n += 1
        if self.n >= self.die_at:
            raise ConnectionError(f"the tracker died at write {self.n}")
        return super()._store(key, value, msg_ttl)


async def test_a_tracker_killed_at_any_write_of_a_fetch_folds_it_exactly_once_when_redelivered() -> None:
    """Kill points during a fold: a fetch of many events of one run, cut at each of its writes in turn (run key,
    each batch key, the run key again); the redelivered fetch, to a tracker with no memory, counts everything once."""
    opening: list[Event] = [RunRequested(pipeline=P, run_id=R, service="t")]
    fetch = [ev for seq in range(6) for ev in _events(seq)[:2]]  # extracted and transformed, six batches
    rest = [ev for seq in range(6) for ev in _events(seq)[2:]]
    closing = [RunExtracted(pipeline=P, run_id=R, service="t", batches=6, records=60)]
    reference = None
    for ev in opening + fetch + rest + closing:
        reference = fold(reference, ev)
    assert reference is not None
    probe = MemoryKV()
    await apply_many(probe, opening)  # type: ignore[arg-type]
    before = probe.revision
    await apply_many(probe, fetch)  # type: ignore[arg-type]
    writes = probe.revision - before
    assert writes == 2 + 6  # the run key twice, each batch key once
    for die_at in range(1, writes + 1):
        kv = DyingKV(die_at=10**9)
        await apply_many(kv, opening)  # type: ignore[arg-type]
        kv.die_at, kv.n = die_at, 0
        with pytest.raises(ConnectionError):
            await apply_many(kv, fetch, ledgers=Ledgers())  # type: ignore[arg-type]
        kv.die_at = 10**9  # restarted
        await apply_many(kv, fetch, ledgers=Ledgers(), defer=2)  # type: ignore[arg-type] # the fetch, redelivered
        await apply_many(kv, rest + closing, ledgers=Ledgers(), defer=2)  # type: ignore[arg-type]
        state = await get_run(kv, P, R)  # type: ignore[arg-type]
        assert state is not None and all(b.outcome == "pending" for b in state.pending.values()), die_at
        assert state.tally == reference.tally and state.settled == reference.settled, die_at
