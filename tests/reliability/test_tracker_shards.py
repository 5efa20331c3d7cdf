"""The tracker's fold sharded across scheduler replicas (`jetl_scheduler.shards`): two replicas share the shards of
JETL_EVENTS, every run of several pipelines completes exactly once with exact counts, and when one replica is
SIGKILLed while folding, the other takes over its shards and the runs still end exact.

The events are published straight to JETL_EVENTS (as the stages would say them, each on its role's subject), so the
test runs the scheduler alone: what it checks is the fold, not the stages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from jetl import subjects
from jetl.bus import connect
from jetl.cli.demo import wait_ready
from jetl.eventlog import read_stream
from jetl.events import (
    BatchExtracted,
    BatchLoaded,
    BatchTransformed,
    Event,
    RunExtracted,
    RunRequested,
    RunStarted,
    parse_event,
)
from jetl.stack.embedded import Stack
from jetl.state import bucket, get_run, watch_values
from jetl.subjects import TRACKER_SHARDS, Kind, Role, StateKey, state_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 10
SAID_BY: dict[type[Event], Role] = {
    RunRequested: "operator",
    RunStarted: "extractor",
    BatchExtracted: "extractor",
    BatchTransformed: "transformer",
    BatchLoaded: "loader",
    RunExtracted: "extractor",
}


def interleaved(runs: list[tuple[str, str]], batches: int) -> list[Event]:
    """The events of `runs` (pipeline, run id) of `batches` batches each, the runs side by side as stages of several
    pipelines would say them: every run's opening, then every run's batch k, then k+1..., then every run.extracted."""
    out: list[Event] = []
    for p, r in runs:
        base: dict[str, Any] = {"pipeline": p, "run_id": r, "service": "test"}
        out += [RunRequested(**base), RunStarted(**base)]
    for seq in range(batches):
        for p, r in runs:
            ids: dict[str, Any] = {
                "pipeline": p,
                "run_id": r,
                "service": "test",
                "batch_id": f"{r}/{seq:04d}",
                "seq": seq,
            }
            out += [
                BatchExtracted(**ids, records=RECORDS),
                BatchTransformed(**ids, records_in=RECORDS, records_out=RECORDS),
                BatchLoaded(**ids, records=RECORDS),
            ]
    for p, r in runs:
        out.append(RunExtracted(pipeline=p, run_id=r, service="test", batches=batches, records=batches * RECORDS))
    return out


async def publish(nc: Any, events: list[Event]) -> None:
    js = nc.jetstream()
    for i in range(0, len(events), 256):
        await asyncio.gather(
            *(
                js.publish(subjects.events(ev.pipeline, ev.run_id, SAID_BY[type(ev)]), ev.model_dump_json().encode())
                for ev in events[i : i + 256]
            )
        )


async def holders(kv: Any) -> dict[str, str]:
    """Shard lease key -> the instance holding it."""
    leases = await watch_values(kv, state_keys(StateKey.SHARD))
    return {k: orjson.loads(v)["instance"] for k, v in leases.items()}


async def shard_of(nc: Any, pipeline: str, run_id: str) -> int:
    """The tracker shard a run's events are stored in (the token JETL_EVENTS's subject transform appended)."""
    stored = read_stream(nc, Kind.EVENTS, subjects.pattern(Kind.EVENTS, pipeline, run_id))
    async with contextlib.aclosing(stored) as log:
        async for m in log:
            return int(m.subject.split(".")[-1])
    raise AssertionError(f"no event of {run_id} in the log")


async def until(check: Any, timeout: float, what: str) -> Any:
    """Ask `check()` until it returns something true (the server's state is polled: nothing here to wait on)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def completed_once(nc: Any, runs: list[tuple[str, str]], batches: int) -> tuple[dict[str, str], set[str]]:
    """What is not exact about each run (its state completed with exact counts, one run.completed in the log), by
    run id, and the instances that completed them."""
    kv = await bucket(nc)
    wrong: dict[str, str] = {}
    by: set[str] = set()
    total = batches * RECORDS
    for p, r in runs:
        st = await get_run(kv, p, r)
        said = [
            parse_event(m.data)
            async for m in read_stream(nc, Kind.EVENTS, subjects.pattern(Kind.EVENTS, p, r, role="scheduler"))
        ]
        done = [e for e in said if e.type == "run.completed"]
        by.update(e.instance for e in done)
        if st is None or st.status != "completed" or (st.extracted, st.loaded, st.rejected) != (total, total, 0):
            wrong[r] = f"state {st and st.status} {st and st.counts()}"
        elif len(done) != 1:
            wrong[r] = f"{len(done)} run.completed in the log"
    return wrong, by


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    (tmp_path / "pipelines").mkdir()
    s = Stack(
        data_dir=tmp_path / "data",
        pipelines_dir=tmp_path / "pipelines",
        services=("scheduler",),
        replicas={"scheduler": 2},
        extra_env={
            "JETL_CRON_ENABLED": "false",
            "JETL_SHARD_LEASE_SECONDS": "3",
            "JETL_NATS__ACK_WAIT": "3",
            "JETL_LOG_LEVEL": "WARNING",
        },
    )
    with s:
        yield s


def test_two_replicas_share_the_fold_and_one_takes_over_when_the_other_is_killed_mid_fold(
    stack: Stack, fault_matrix: Any
) -> None:
    async def body() -> None:
        await wait_ready(stack)
        nc = await connect(stack.operator)
        try:
            kv = await bucket(nc)

            async def shared() -> dict[str, str] | None:
                held = await holders(kv)
                return held if len(held) == TRACKER_SHARDS and len(set(held.values())) == 2 else None

            await until(shared, 60, "both replicas to hold shards")

            # several pipelines' runs, folded side by side by both replicas
            first = [(f"shard{p}", f"first-{p}-{n}") for p in "abcd" for n in range(3)]
            completions = await nc.subscribe(subjects.events_by("scheduler"))
            await publish(nc, interleaved(first, 30))
            pending = {r for _, r in first}
            while pending:
                ev = parse_event((await completions.next_msg(timeout=60)).data)
                pending.discard(ev.run_id if ev.type == "run.completed" else "")
            wrong, by = await completed_once(nc, first, 30)
            assert not wrong, wrong
            assert len(by) == 2, by  # both replicas folded some of them

            # a SIGKILL of a replica while it is folding a run: one of its shards' runs is part way folded
            second = [(f"shard{p}", f"second-{p}-{n}") for p in "abcd" for n in range(3)]
            batches = 150
            await publish(nc, interleaved(second, batches))
            pids = {f":{p.proc.pid}": name for name, p in stack.procs.items() if p.proc is not None}

            async def folding() -> str | None:
                """The replica folding a run that is part way folded (by its shard's lease)."""
                held = await holders(kv)
                for p, r in second:
                    st = await get_run(kv, p, r)
                    if st is not None and 0 < st.loaded < batches * RECORDS:
                        holder = held.get(state_keys(StateKey.SHARD, str(await shard_of(nc, p, r))), "")
                        return next((name for pid, name in pids.items() if holder.endswith(pid)), None)
                return None

            victim = stack.procs[await until(folding, 60, "a run to be part way folded")]
            assert victim.proc is not None
            gone = f":{victim.proc.pid}"
            victim.stop(kill=True)
            fault_matrix.record_kill()

            async def taken_over() -> dict[str, str] | None:
                held = await holders(kv)
                return (
                    held if len(held) == TRACKER_SHARDS and not any(h.endswith(gone) for h in held.values()) else None
                )

            await until(taken_over, 120, "the survivor to take over every shard")
            pending = {r for _, r in second}
            while pending:
                ev = parse_event((await completions.next_msg(timeout=120)).data)
                pending.discard(ev.run_id if ev.type == "run.completed" else "")
            wrong, _ = await completed_once(nc, second, batches)
            for _, r in second:
                fault_matrix.record_run(r not in wrong)
            assert not wrong, wrong
            await completions.unsubscribe()
        finally:
            await nc.close()

    asyncio.run(asyncio.wait_for(body(), 400))
