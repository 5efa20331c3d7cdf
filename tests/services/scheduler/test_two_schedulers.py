"""Two scheduler processes at once, no leader election: each cron slot still gives exactly one run.

The schedulers run a per-minute cron on a test clock sixty times faster than real time (one slot per second), next
to an extractor, a transformer and a loader, all separate OS processes over one nats-server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from jetl.bus import connect
from jetl.eventlog import read_events
from jetl.events import RunCompleted, RunRequested, RunStarted
from jetl.settings import NatsSettings
from jetl.stack.embedded import ServiceProcess, Stack, service_env
from jetl.state import bucket, set_paused
from jetl.subjects import Kind, stream_name
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = """
from pydantic import BaseModel
from jetl import Cron, FileExtractor, FileLoader, Pipeline

class Tick(BaseModel):
    n: int

def register_pipelines():
    return [Pipeline(name="ticker", extractors=[FileExtractor("INPUT", skip_loaded=False)],
                     loader=FileLoader("OUTPUT"), schema=Tick,
                     schedule=Cron("* * * * *", catch_up="all", max_active_runs=100))]
"""


def test_two_scheduler_replicas_give_one_run_per_slot(tmp_path: Path, nats: NatsHandle) -> None:
    inputs, output, pipelines, data = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines", tmp_path / "data"
    inputs.mkdir()
    (inputs / "ticks.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(5)))
    pipelines.mkdir()
    (pipelines / "ticker_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(output)))
    clock = {"JETL_CLOCK_EPOCH": str(time.time()), "JETL_CLOCK_SPEED": "60", "JETL_TICK_SECONDS": "0.05"}
    schedulers = [
        ServiceProcess(
            "scheduler",
            service_env(nats.url, data, pipelines, {**clock, "JETL_INSTANCE": f"sched-{x}"}),
            data / "logs" / f"scheduler-{x}.log",
        )
        for x in ("a", "b")
    ]
    with Stack(data, pipelines, nats_url=nats.url, services=("extractor", "transformer", "loader")) as stack:
        for s in schedulers:
            s.start()
        try:
            wait_started(schedulers)
            time.sleep(7)  # about seven slots of the sped-up per-minute cron, both replicas ticking
            wait_both_ticked(data, timeout=30)  # on a busy host one replica may win the first slots' races
            assert all(s.alive() for s in schedulers), "a scheduler died"
            asyncio.run(pause(nats.url))  # no more slots; the replicas' trackers finish the runs in flight
            events = asyncio.run(settle_and_read(nats.url))
        finally:
            for s in schedulers:
                s.stop()
        stack.check()

    requested = [e for e in events if isinstance(e, RunRequested) and e.trigger == "schedule"]
    run_ids = sorted(e.run_id for e in requested)
    assert len(run_ids) >= 5, f"too few slots in the window: {run_ids}"
    assert len(set(run_ids)) == len(run_ids)

    # every slot between the first and the last, each minute once: none lost, none doubled
    starts = sorted(e.data_interval_start for e in requested if e.data_interval_start)
    assert [b - a for a, b in itertools.pairwise(starts)] == [timedelta(minutes=1)] * (len(starts) - 1)
    assert all(e.data_interval_end == e.data_interval_start + timedelta(minutes=1) for e in requested)  # type: ignore[operator]

    # JetStream stored exactly one run request per slot (the duplicate window dropped the other replica's)
    stored = asyncio.run(runs_stored(nats.url))
    assert stored == len(run_ids)

    # exactly one publish per slot was accepted as new, across both replicas; the extractor ran each slot once
    logs = {x: (data / "logs" / f"scheduler-{x}.log").read_text() for x in ("a", "b")}
    new = {rid: sum(_lines_with(text, "scheduled run requested", rid) for text in logs.values()) for rid in run_ids}
    assert all(n == 1 for n in new.values()), new
    both_worked = [x for x, text in logs.items() if "scheduled run requested" in text or "already requested" in text]
    assert both_worked == ["a", "b"], "each replica should have ticked the pipeline"
    extractor_log = (data / "logs" / "extractor.log").read_text()
    assert all(_lines_with(extractor_log, "run extracted", rid) == 1 for rid in run_ids)
    assert "already completed" not in extractor_log

    started = Counter(e.run_id for e in events if isinstance(e, RunStarted))
    completed = {e.run_id for e in events if isinstance(e, RunCompleted)}
    assert set(run_ids) <= completed
    assert all(started[rid] == 1 for rid in run_ids)
    assert len(list(output.glob("ticker/*/*.jsonl"))) == len(run_ids)  # one part per run: 5 records each


def wait_started(procs: list[ServiceProcess], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.log_path.exists() and "service started" in p.log_path.read_text() for p in procs):
            return
        assert all(p.alive() for p in procs), "a scheduler died during start-up"
        time.sleep(0.1)
    raise AssertionError("schedulers did not start")


def wait_both_ticked(data: Path, timeout: float) -> None:
    """Until each replica has requested a slot or found it requested (or the timeout; the test then says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [(data / "logs" / f"scheduler-{x}.log").read_text() for x in ("a", "b")]
        if all("scheduled run requested" in t or "already requested" in t for t in logs):
            return
        time.sleep(0.5)


async def pause(url: str) -> None:
    nc = await connect(NatsSettings(url=url))
    try:
        await set_paused(await bucket(nc), "ticker", True)
    finally:
        await nc.close()


def _lines_with(text: str, message: str, run_id: str) -> int:
    return sum(1 for line in text.splitlines() if message in line and f"run_id={run_id}" in line)


async def runs_stored(url: str) -> int:
    nc = await connect(NatsSettings(url=url))
    try:
        info = await nc.jetstream().stream_info(stream_name(Kind.RUN))
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def settle_and_read(url: str, timeout: float = 30.0) -> list[object]:
    """Wait until every scheduled run has completed, then return the whole event log."""
    nc = await connect(NatsSettings(url=url))
    try:
        deadline = time.monotonic() + timeout
        while True:
            events = [e async for e in read_events(nc)]
            asked = {e.run_id for e in events if isinstance(e, RunRequested)}
            done = {e.run_id for e in events if isinstance(e, RunCompleted)}
            if (asked and asked <= done) or time.monotonic() > deadline:
                return list(events)
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
