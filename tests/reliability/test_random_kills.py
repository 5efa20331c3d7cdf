"""Seeded random SIGKILLs: several runs, each with several services killed at random points of its event stream
(any of the four, the same one twice sometimes, a restarted one again before it is up), and every run still ends
completed, with a reconciled ledger and exactly its rows in the destination, each id once.

The seed is fixed so a failure can be replayed; JETL_TEST_KILL_SEED tries another.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from jetl.ops.client import JetlClient
from jetl.projection import RunState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("JETL_TEST_KILL_SEED", "1212"))
RUNS = 3
KILLS_PER_RUN = 7
ROWS = 500  # 20 batches of 25: a run is about 3 * 20 + 4 events
SERVICES = ("extractor", "transformer", "loader", "scheduler")


def kill_plans(seed: int) -> list[dict[int, str]]:
    """Per run, {event index: service to SIGKILL after it}, drawn from `seed`, over the first 80% of the events."""
    rng = random.Random(seed)
    events = 3 * (ROWS // 25) + 4
    return [
        {n: rng.choice(SERVICES) for n in sorted(rng.sample(range(2, int(events * 0.8)), KILLS_PER_RUN))}
        for _ in range(RUNS)
    ]


def test_seeded_random_sigkills_across_the_four_services(crash_lab: Any, fault_matrix: Any) -> None:
    plans = kill_plans(SEED)
    assert {s for plan in plans for s in plan.values()} == set(SERVICES), f"seed {SEED} leaves a service out"
    results: list[Any] = []
    exact: list[bool] = []

    async def go() -> None:
        with crash_lab.stack() as stack:
            async with JetlClient(crash_lab.settings) as jc:
                crash_lab.add_input(ROWS)
                warm = await asyncio.wait_for(crash_lab.run(jc, stack), 120)  # and the services are up
                for plan in plans:
                    crash_lab.add_input(ROWS)

                    def at(n: int, st: RunState, seen: list[str], plan: dict[int, str] = plan) -> str | None:
                        return plan.get(n)

                    results.append(await asyncio.wait_for(crash_lab.run(jc, stack, at), 240))
                    stack.check()
                by_run = (await jc.destination_count("crash")).by_run
        assert crash_lab.exact(warm, ROWS, by_run)
        for r in results:
            exact.append(crash_lab.exact(r, ROWS, by_run))
            fault_matrix.record_kill(len(r.killed))
            fault_matrix.record_run(exact[-1])  # several kills a run: its delay is no one kill's recovery

    asyncio.run(go())
    print(f"seed {SEED}: " + "; ".join(f"{r.killed} in {r.seconds:.1f} s" for r in results))

    for plan, r, ok in zip(plans, results, exact, strict=True):
        st = r.state
        assert ok, f"seed {SEED}, kills {plan} (done: {r.killed}): {st.status} {st.counts()} {st.error or ''}"
    assert sum(len(r.killed) for r in results) >= 20, f"seed {SEED}: runs ended before their kill points"
    total = (RUNS + 1) * ROWS
    assert crash_lab.destination() == {"n": total, "u": total, "lo": 0, "hi": total - 1}
