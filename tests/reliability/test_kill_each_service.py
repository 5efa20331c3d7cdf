"""Exactly-once in the destination under crashes: each of the four services is SIGKILLed in turn in the middle of a
run (judged from the run's events), restarted, and the run still completes with ClickHouse holding exactly the
source rows: nothing lost, nothing twice.

The pipeline is paced (a short sleep per chunk, per batch, per insert) so that a run lasts a few seconds and the
kill lands while some but not all batches are through the stage; the consumers' ack wait is short so a dead
worker's messages come back quickly.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from jetl.client import JetlClient
from jetl.events import RunCompleted, RunFailed
from jetl.projection import RunState, fold
from jetl.runtime.embedded import Stack
from jetl.settings import JetlSettings, NatsSettings
from jetl.testing import chdb
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACK_WAIT = "5"
PER_ROUND = 1500
BATCH = 25  # 60 batches a run

PIPELINE = """
import asyncio
import time
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, Pipeline

PACE = 0.03

class Row(BaseModel):
    id: int
    name: str

class Paced:
    '''A FileExtractor that takes its time, so a run is still extracting when the extractor is killed.'''

    def __init__(self, inner):
        self.inner = inner

    async def extract(self, ctx):
        async for chunk in self.inner.extract(ctx):
            await asyncio.sleep(PACE)
            yield chunk

    def next_cursor(self):
        return self.inner.next_cursor()

    def check(self, settings):
        return self.inner.check(settings)

class Slow:
    def transform(self, records):
        time.sleep(PACE)
        return records

class SlowClickHouse(ClickHouseLoader):
    def load(self, records, ctx):
        n = super().load(records, ctx)
        time.sleep(PACE)  # after the insert: a kill here leaves rows written but the batch unacked
        return n

def register_pipelines():
    return [Pipeline(name="crash", extractors=[Paced(FileExtractor("INPUT/*.jsonl", chunk_size=BATCH))],
                     transformers=[Slow()], loader=SlowClickHouse("crash", order_by=["id"]), schema=Row,
                     batch_size=BATCH)]
"""


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


async def run_and_kill(jc: JetlClient, stack: Stack, service: str) -> tuple[RunState, set[str]]:
    """Request a run, SIGKILL `service` at its kill point, restart it, and follow the run to its end.

    Returns the run's state and the instances (host:pid) of `service` that its events name.
    """
    req = await jc.request_run("crash")
    state: RunState | None = None
    seen: list[str] = []
    killed: dict[str, str] = {}
    instances: set[str] = set()
    async for ev in jc.follow("crash", req.run_id):
        state = fold(state, ev)
        seen.append(ev.type)
        if ev.service == service:
            instances.add(ev.instance)
        if not killed and kill_point(service, state, seen):
            proc = stack.procs[service]
            assert proc.proc is not None
            killed = {"pid": str(proc.proc.pid), "at": f"{state.counts()}"}
            proc.stop(kill=True)
            proc.start()
        if isinstance(ev, RunCompleted | RunFailed):
            break
    assert state is not None and killed, f"the run ended before {service} could be killed mid-run"
    return state, instances


def test_sigkill_each_service_mid_run_loses_and_duplicates_nothing(tmp_path: Path, nats: NatsHandle) -> None:
    inputs, pipelines, data = tmp_path / "in", tmp_path / "pipelines", tmp_path / "data"
    inputs.mkdir()
    pipelines.mkdir()
    (pipelines / "crash_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("BATCH", str(BATCH)))
    settings = JetlSettings(nats=NatsSettings(url=nats.url, ack_wait=float(ACK_WAIT)))
    services = ("extractor", "transformer", "loader", "scheduler")
    runs: dict[str, RunState] = {}
    instances: dict[str, set[str]] = {}

    async def rounds(stack: Stack) -> dict[str, int] | None:
        async with JetlClient(settings) as jc:
            for k, service in enumerate(services):
                rows = range(k * PER_ROUND, (k + 1) * PER_ROUND)  # each round a new file: the cursor skips the old
                (inputs / f"round{k}.jsonl").write_text(
                    "".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in rows)
                )
                runs[service], instances[service] = await asyncio.wait_for(run_and_kill(jc, stack, service), 180)
                stack.check()
            count = await jc.destination_count("crash")
            return count.by_run

    with Stack(
        data_dir=data, pipelines_dir=pipelines, nats_url=nats.url, extra_env={"JETL_NATS__ACK_WAIT": ACK_WAIT}
    ) as stack:
        by_run = asyncio.run(rounds(stack))

    for service, st in runs.items():
        assert st.status == "completed", f"{service}: {st.error}"
        assert (st.extracted, st.loaded, st.rejected) == (PER_ROUND, PER_ROUND, 0), f"{service}: {st.counts()}"
        assert st.reconciles
        assert by_run is not None and by_run[st.run_id] == PER_ROUND, f"{service}: destination has {by_run}"
    for service in ("extractor", "transformer", "loader"):  # the kill landed mid-run: a second process finished it
        assert len(instances[service]) == 2, f"{service}: {instances[service]}"
    assert len(instances["scheduler"]) == 1  # run.completed comes from the restarted tracker, once
    rows = chdb.query(data / "chdb", "SELECT count() AS n, uniqExact(id) AS u, min(id) AS lo, max(id) AS hi FROM crash")
    assert rows == [{"n": 4 * PER_ROUND, "u": 4 * PER_ROUND, "lo": 0, "hi": 4 * PER_ROUND - 1}]


PARTITIONED = PIPELINE.replace(
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
    tmp_path: Path, nats: NatsHandle
) -> None:
    """Two extractor replicas share one file's byte ranges; one is SIGKILLed while it is extracting a partition.
    Its partition is redelivered and extracted again under the same batch ids: the rows are exact."""
    inputs, pipelines, data = tmp_path / "in", tmp_path / "pipelines", tmp_path / "data"
    inputs.mkdir()
    pipelines.mkdir()
    (inputs / "big.jsonl").write_text(
        "".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in range(PER_ROUND))
    )  # ~39 kB: 6 or 7 byte ranges
    pipeline = PARTITIONED.replace("INPUT", str(inputs)).replace("BATCH", str(BATCH)).replace("PART", "6500")
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
