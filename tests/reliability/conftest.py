"""The fault matrix: what the reliability tests share.

- `fault_matrix`: a session-wide collector every reliability test reports into (kill points tried, runs and whether
  each ended exact, recovery delays, bad records planted and dead-lettered). At the end of the session it prints
  one line, `fault matrix: kill points N, runs exact X/Y, max recovery S s, dead-lettered A/B`.
- `crash_lab`: a paced pipeline over a stack of the four services, for tests that SIGKILL services or restart NATS
  mid-run: it writes each run's input, runs it (killing services at given points), and checks the destination.

A test records a run before it asserts on it, so a run that did not end exact is counted as such.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jetl.events import RunCompleted, RunFailed
from jetl.ops.client import JetlClient
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb
from jetl.testing.servers import NatsHandle


@dataclass
class FaultMatrix:
    """Counts of the faults the reliability tests tried and how the runs came out."""

    kill_points: int = 0
    runs: int = 0
    exact: int = 0
    recoveries: list[float] = field(default_factory=list)
    planted: int = 0
    dead_lettered: int = 0

    def record_kill(self, n: int = 1) -> None:
        """`n` more kill points tried (a SIGKILL of a service or a NATS node, a NATS restart)."""
        self.kill_points += n

    def record_run(self, exact: bool, recovery_s: float | None = None) -> None:
        """One more run under faults: whether it ended exact (rows, distinct ids, ledger, status), and how much
        longer than an unfaulted run it took (None when the test has no baseline to measure it against)."""
        self.runs += 1
        self.exact += int(exact)
        if recovery_s is not None:
            self.recoveries.append(max(0.0, recovery_s))

    def record_bad(self, planted: int, dead_lettered: int) -> None:
        """Bad records a test planted in its input, and how many of them reached the DLQ with a reason."""
        self.planted += planted
        self.dead_lettered += dead_lettered

    @property
    def touched(self) -> bool:
        """Some reliability test reported into it."""
        return bool(self.kill_points or self.runs or self.planted)

    def line(self) -> str:
        """The summary line."""
        worst = max(self.recoveries, default=0.0)
        return (
            f"fault matrix: kill points {self.kill_points}, runs exact {self.exact}/{self.runs}, "
            f"max recovery {worst:.1f} s, dead-lettered {self.dead_lettered}/{self.planted}"
        )


_MATRIX = FaultMatrix()


@pytest.fixture(scope="session")
def fault_matrix() -> FaultMatrix:
    """The session's fault-matrix collector (printed at the end of the run)."""
    return _MATRIX


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault-matrix line once the session is over (only when a reliability test reported)."""
    if _MATRIX.touched:
        terminalreporter.write_sep("=", "fault matrix")
        terminalreporter.write_line(_MATRIX.line())


# ---- the crash lab: a paced pipeline whose runs last a few seconds, so faults land mid-run

BATCH = 25

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

SERVICES = ("extractor", "transformer", "loader", "scheduler")

ACK_WAIT = 5.0
"""The lab's ack wait (the default is 10 s): a SIGKILLed stage's messages come back after it, so each kill point
costs about this much less waiting. Live workers beat every third of it (`jetl.runtime.service.keep_alive`), so a
beat may be over 3 s late on a loaded host before its batch is handed out again; and a redelivery to a live worker
would still have to end exact (test_faults stalls one past the ack wait on purpose)."""
SHARD_LEASE_S = 3.0
"""The scheduler's tracker-shard lease (the default is 15 s): a restarted scheduler takes the shards its SIGKILLed
predecessor held once their leases have stood still this long, the same takeover as after 15 s. The lab runs one
scheduler, so a late renewal is never lost to another replica."""
LAB_ENV = {"JETL_NATS__ACK_WAIT": str(ACK_WAIT), "JETL_SHARD_LEASE_SECONDS": str(SHARD_LEASE_S)}

KillPlan = Callable[[int, RunState, list[str]], str | None]
"""Which service to SIGKILL after a run's n-th event (given n, the run's state and its event types so far)."""


@dataclass
class RunResult:
    """How one run under faults ended."""

    state: RunState
    seconds: float
    """From the request to run.completed (or run.failed), as the client saw it."""
    killed: list[str] = field(default_factory=list)
    """The services SIGKILLed during the run, in order."""
    instances: dict[str, set[str]] = field(default_factory=dict)
    """Per service, the instances (host:pid) that the run's events name."""


class CrashLab:
    """The `crash` pipeline (paced, ClickHouse via chdb) in a temporary folder, over one NATS."""

    PIPELINE_TEMPLATE = PIPELINE
    """The pipeline module's text, INPUT and BATCH still to fill in (for variants of it)."""

    def __init__(self, root: Path, nats: NatsHandle) -> None:
        self.inputs, self.pipelines, self.data = root / "in", root / "pipelines", root / "data"
        self.inputs.mkdir()
        self.pipelines.mkdir()
        text = PIPELINE.replace("INPUT", str(self.inputs)).replace("BATCH", str(BATCH))
        (self.pipelines / "crash_pipeline.py").write_text(text)
        self.nats = nats
        self.settings = JetlSettings(nats=NatsSettings(url=nats.url, ack_wait=ACK_WAIT))
        self.rows = 0
        """Rows written to inputs so far (ids 0 .. rows-1)."""

    def stack(self) -> Stack:
        """The four services over the lab's NATS (a context manager), with the lab's ack wait (deployed by the
        stack's start) and shard lease."""
        return Stack(data_dir=self.data, pipelines_dir=self.pipelines, nats_url=self.nats.url, extra_env=dict(LAB_ENV))

    def add_input(self, rows: int) -> range:
        """A new input file of `rows` new ids (the pipeline's cursor skips the files earlier runs loaded)."""
        ids = range(self.rows, self.rows + rows)
        path = self.inputs / f"part{len(list(self.inputs.iterdir())):03d}.jsonl"
        path.write_text("".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in ids))
        self.rows += rows
        return ids

    async def run(self, jc: JetlClient, stack: Stack, kill: KillPlan | None = None) -> RunResult:
        """Request a run and follow it to its end; after each of its events, SIGKILL the service `kill` names (given
        the event's 1-based index, the run's state and the event types so far), if any, and start it again.

        A kill point the run never reached (it ended first) is not in the result's `killed`.
        """
        started = time.monotonic()
        req = await jc.request_run("crash")
        state: RunState | None = None
        result_killed: list[str] = []
        instances: dict[str, set[str]] = {}
        seen: list[str] = []
        async for ev in jc.follow("crash", req.run_id):
            state = fold(state, ev)
            seen.append(ev.type)
            instances.setdefault(ev.service, set()).add(ev.instance)
            victim = kill(len(seen), state, seen) if kill is not None else None
            if victim is not None:
                proc = stack.procs[victim]
                proc.stop(kill=True)
                proc.start()
                result_killed.append(victim)
            if isinstance(ev, RunCompleted | RunFailed):
                break
        assert state is not None
        return RunResult(state, time.monotonic() - started, result_killed, instances)

    @staticmethod
    def exact(result: RunResult, rows: int, by_run: dict[str, int] | None) -> bool:
        """The run completed, its ledger reconciles with `rows` extracted and loaded, and the destination holds
        exactly `rows` rows of it (a batch loaded twice would show as more)."""
        st = result.state
        return (
            st.status == "completed"
            and st.reconciles
            and (st.extracted, st.loaded, st.rejected) == (rows, rows, 0)
            and by_run is not None
            and by_run.get(st.run_id) == rows
        )

    def destination(self) -> dict[str, Any]:
        """Rows, distinct ids and the id range in the destination (read once the stack has stopped: chdb opens in
        one process at a time)."""
        (row,) = chdb.query(
            self.data / "chdb", "SELECT count() AS n, uniqExact(id) AS u, min(id) AS lo, max(id) AS hi FROM crash"
        )
        return row


@pytest.fixture
def crash_lab(tmp_path: Path, nats: NatsHandle) -> Iterator[CrashLab]:
    """A crash lab over this test's NATS."""
    yield CrashLab(tmp_path, nats)
