"""Exactly-once in the destination under crashes, and recovery in seconds: each of the four services is SIGKILLed in
turn in the middle of a run (judged from the run's events), restarted, and the run still completes with ClickHouse
holding exactly the source rows: nothing lost, nothing twice.

Each killed run's delay against an unkilled baseline run is the recovery the fault matrix reports: a dead worker's
messages come back after the ack wait (10 s), while live workers keep theirs with in_progress() beats.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetl.client import JetlClient
from jetl.projection import RunState

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
