"""Exactly-once in the destination under crashes, and recovery in seconds: each of the four services is SIGKILLed in
turn in the middle of a run (judged from the run's events), restarted, and the run still completes with ClickHouse
holding exactly the source rows: nothing lost, nothing twice.

Each killed run's delay against an unkilled baseline run is the recovery the fault matrix reports: a dead worker's
messages come back after the ack wait (the crash lab's 5 s), while live workers keep theirs with in_progress() beats;
a killed scheduler's tracker shards are taken over by its restarted process once their leases are stale (the lab's
3 s).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from jetl.events import RunCompleted, RunFailed
from jetl.ops.client import JetlClient
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_ROUND = 1000
BATCH = 25  # 40 batches a run, as the crash lab's pipeline batches them
SERVICES = ("extractor", "transformer", "loader", "scheduler")


def kill_point(service: str, st: RunState, events: list[str]) -> bool:
    """Some but not all of the run's batches are through the stage that `service` does (or watches)."""
    extracted = sum(1 for b in st.batches.values() if b.extracted)
    transformed = sum(1 for b in st.batches.values() if b.transformed)
    loaded = sum(1 for b in st.batches.values() if b.outcome == "loaded")
    total = PER_ROUND // BATCH
    if service == "extractor":
        return extracted >= 10 and "run.extracted" not in events
    if service == "transformer":
        return 10 <= transformed < total - 10
    return 10 <= loaded < total - 10  # loader; and the scheduler's tracker, mid-way through folding the run


def once_at_kill_point(service: str) -> Any:
    """A kill plan: SIGKILL `service` the first time the run reaches its kill point."""
    done: list[bool] = []

    def plan(n: int, st: RunState, seen: list[str]) -> str | None:
        if done or not kill_point(service, st, seen):
            return None
        done.append(True)
        return service

    return plan


def test_sigkill_each_service_mid_run_loses_and_duplicates_nothing(crash_lab: Any, fault_matrix: Any) -> None:
    results: dict[str, Any] = {}
    exact: dict[str, bool] = {}

    async def rounds() -> None:
        with crash_lab.stack() as stack:
            async with JetlClient(crash_lab.settings) as jc:
                for key in ("warm-up", "baseline"):  # the first run also waits for the services to start
                    crash_lab.add_input(PER_ROUND)
                    results[key] = await asyncio.wait_for(crash_lab.run(jc, stack), 120)
                for service in SERVICES:
                    crash_lab.add_input(PER_ROUND)
                    plan = once_at_kill_point(service)
                    results[service] = await asyncio.wait_for(crash_lab.run(jc, stack, plan), 180)
                    stack.check()
                by_run = (await jc.destination_count("crash")).by_run
        for key, r in results.items():
            exact[key] = crash_lab.exact(r, PER_ROUND, by_run)
            if key in SERVICES:
                fault_matrix.record_kill(len(r.killed))
                fault_matrix.record_run(exact[key], r.seconds - results["baseline"].seconds)

    asyncio.run(rounds())
    delays = {s: round(results[s].seconds - results["baseline"].seconds, 1) for s in SERVICES}
    print(f"baseline {results['baseline'].seconds:.1f} s; delay per killed service: {delays}")

    for key, r in results.items():
        st = r.state
        assert st.status == "completed", f"{key}: {st.error}"
        assert exact[key], f"{key}: {st.counts()}, reconciles={st.reconciles}"
    for service in ("extractor", "transformer", "loader"):  # the kill landed mid-run: a second process finished it
        assert results[service].killed == [service]
        assert len(results[service].instances[service]) == 2, f"{service}: {results[service].instances}"
    assert len(results["scheduler"].instances["scheduler"]) == 1  # run.completed comes from the restarted tracker
    assert crash_lab.destination() == {"n": 6 * PER_ROUND, "u": 6 * PER_ROUND, "lo": 0, "hi": 6 * PER_ROUND - 1}


ACK_WAIT = "5"


def partitioned(pipeline: str) -> str:
    """The crash pipeline, its extractor split into byte ranges that extractor replicas share."""
    return pipeline.replace(
        """    def next_cursor(self):""",
        """    def partitions(self, ctx):
        return self.inner.partitions(ctx)

    async def extract_partition(self, ctx, partition):
        async for chunk in self.inner.extract_partition(ctx, partition):
            await asyncio.sleep(PACE)
            yield chunk

    def next_cursor(self):""",
    ).replace("chunk_size=BATCH)", "chunk_size=BATCH, partition_bytes=PART)")


def test_sigkill_an_extractor_mid_partition_re_extracts_it_with_the_same_batch_ids(
    crash_lab: Any,
) -> None:
    """Two extractor replicas share one file's byte ranges; one is SIGKILLed while it is extracting a partition.
    Its partition is redelivered and extracted again under the same batch ids: the rows are exact."""
    inputs, pipelines, data, nats = crash_lab.inputs, crash_lab.pipelines, crash_lab.data, crash_lab.nats
    (inputs / "big.jsonl").write_text(
        "".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in range(PER_ROUND))
    )  # ~39 kB: 6 or 7 byte ranges
    pipeline = (
        partitioned(crash_lab.PIPELINE_TEMPLATE)
        .replace("INPUT", str(inputs))
        .replace("BATCH", str(BATCH))
        .replace("PART", "6500")
    )
    (pipelines / "crash_pipeline.py").write_text(pipeline)
    settings = JetlSettings(nats=NatsSettings(url=nats.url, ack_wait=float(ACK_WAIT)))

    async def run(stack: Stack) -> tuple[RunState, dict[str, set[str]], str, dict[str, int] | None]:
        async with JetlClient(settings) as jc:
            req = await jc.request_run("crash")
            state: RunState | None = None
            by_instance: dict[str, set[str]] = {}
            victim = ""
            async for ev in jc.follow("crash", req.run_id):
                state = fold(state, ev)
                if ev.type == "batch.extracted":
                    by_instance.setdefault(ev.instance, set()).add(ev.batch_id)  # type: ignore[union-attr]
                if not victim and ev.type == "batch.extracted" and len(by_instance.get(ev.instance, ())) >= 3:
                    name = next(
                        n
                        for n in ("extractor", "extractor2")
                        if f":{stack.procs[n].proc.pid}" in ev.instance  # type: ignore[union-attr]
                    )
                    victim = ev.instance
                    stack.procs[name].stop(kill=True)  # mid-partition: it has published some of its batches
                    stack.procs[name].start()
                if isinstance(ev, RunCompleted | RunFailed):
                    break
            assert state is not None and victim
            return state, by_instance, victim, (await jc.destination_count("crash")).by_run

    with Stack(
        data_dir=data,
        pipelines_dir=pipelines,
        nats_url=nats.url,
        replicas={"extractor": 2},
        extra_env={"JETL_NATS__ACK_WAIT": ACK_WAIT},
    ) as stack:
        st, by_instance, victim, by_run = asyncio.run(asyncio.wait_for(run(stack), 180))

    assert st.status == "completed", st.error
    assert st.partitions is not None and st.partitions >= 5 and len(st.partition_batches) == st.partitions
    assert (st.extracted, st.loaded, st.rejected) == (PER_ROUND, PER_ROUND, 0), st.counts()
    assert st.reconciles and by_run is not None and by_run[st.run_id] == PER_ROUND
    # the killed partition: its first batches came from the victim, the rest from the replica that took it over
    # (the batches it extracted again kept their ids, so JetStream dropped them and their events as duplicates)
    parts = {i: {b.split("/")[1] for b in ids} for i, ids in by_instance.items()}
    taken_over = {p for i, ps in parts.items() if i != victim for p in ps} & parts[victim]
    assert taken_over, f"no partition was finished by another replica after the kill: {parts}"
    # the same ids: a partition extracted twice counts once
    assert len(st.batches) == sum(st.partition_batches.values()) == st.expected_batches
    rows = chdb.query(data / "chdb", "SELECT count() AS n, uniqExact(id) AS u, min(id) AS lo, max(id) AS hi FROM crash")
    assert rows == [{"n": PER_ROUND, "u": PER_ROUND, "lo": 0, "hi": PER_ROUND - 1}]
