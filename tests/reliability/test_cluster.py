"""jetl on a real three-node NATS JetStream cluster, under the faults a cluster exists to survive.

The four services run as processes against the cluster's seed list, with every jetl stream and the state bucket at
three replicas. In the middle of a run (judged from the run's state in KV) one fault is injected:
- a node is SIGKILLed, and started again once the run has moved on without it;
- the node leading JETL_RAW is SIGKILLed: a new leader must be elected and the run go on;
- a node is cut off from the network (a network namespace) while its process keeps running, then healed.

Each run must end completed, with exactly the source rows in ClickHouse (chdb), every id once, and `jetl counts`
saying the ledger reconciles and the destination matches it. Inputs are small and the pipeline paced, so a run
lasts a few seconds and the fault lands while some but not all batches are through.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from jetl.bus import connect
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import USERS_FILE, Stack
from jetl.state import bucket, get_run
from jetl.subjects import DLQ_BODIES_BUCKET, STATE_BUCKET, STREAMS
from jetl.testing import chdb
from jetl.testing.cli import jetl, jetl_up
from jetl.testing.servers import ClusterHandle, partitioned_nats_cluster
from jetl.topology import declare

from .conftest import BATCH, PIPELINE  # the crash lab's paced pipeline, `crash`

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 1200  # 48 batches a run
REPLICAS = "3"
QUERY = "SELECT count() AS n, uniqExact(id) AS u, min(id) AS lo, max(id) AS hi FROM crash"
ENV = {"JETL_NATS__ACK_WAIT": "5", "JETL_NATS__STREAM_REPLICAS": REPLICAS}


@dataclass
class Fault:
    """What to break in the middle of the run, and how to mend it."""

    inject: Callable[[], None]
    heal: Callable[[], None]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """How the run went: its final state, and seconds from the fault until batches were loaded again."""

    state: RunState
    recovery_s: float | None
    replicas: dict[str, int]


def _progress(st: RunState) -> tuple[int, int]:
    return st.extracted, st.loaded


def mid_run(st: RunState) -> bool:
    """Some but not all of the run's records are loaded: a fault now hits work in flight in every stage."""
    return 2 * BATCH <= st.loaded < ROWS - 12 * BATCH


async def drive(settings: JetlSettings, fault: Fault, timeout: float = 180.0) -> Outcome:
    """Request a run, inject the fault mid-run, heal it once batches load again (or after 10 s), and poll the
    run's state until it settles. The poller's own connection reconnects to another node of the seed list."""
    async with JetlClient(settings) as jc:
        run_id = (await jc.request_run("crash")).run_id
        js = jc.conn.jetstream()
        replicas = {n: (await js.stream_info(n)).config.num_replicas for n in [s.name for s in STREAMS.values()]}
        for bucket_stream in (f"KV_{STATE_BUCKET}", f"OBJ_{DLQ_BODIES_BUCKET}"):
            replicas[bucket_stream] = (await js.stream_info(bucket_stream)).config.num_replicas
    nc = await connect(settings.nats, reconnect_time_wait=0.5, max_reconnect_attempts=-1)
    try:
        kv = await bucket(nc)
        injected_at: float | None = None
        loaded_then = 0
        recovery: float | None = None
        healed = False
        deadline = time.monotonic() + timeout
        st: RunState | None = None
        started = time.monotonic()
        trace: list[tuple[float, str, int, int]] = []  # what the poller saw, for the failure message
        while time.monotonic() < deadline:
            # healed on time whether or not this poll gets through: the poller may be the one cut off
            if injected_at is not None and not healed and (recovery is not None or time.monotonic() - injected_at > 10):
                fault.heal()
                healed = True
            try:
                st = await asyncio.wait_for(get_run(kv, "crash", run_id), 3) or st
            except Exception:  # this node is the one down or cut off: ask again, through whichever node answers
                await asyncio.sleep(0.2)
                continue
            now = time.monotonic()
            if st is not None and (not trace or trace[-1][1:] != (st.status, *_progress(st))):
                trace.append((round(now - started, 1), st.status, *_progress(st)))
            if st is not None and injected_at is None and mid_run(st):
                loaded_then = st.loaded
                fault.inject()
                injected_at = time.monotonic()
            elif (
                injected_at is not None
                and recovery is None
                and st is not None
                and (st.loaded > loaded_then or st.status == "completed")
            ):
                recovery = now - injected_at
            if st is not None and st.status in ("completed", "failed"):
                if injected_at is not None and not healed:
                    fault.heal()
                break
            await asyncio.sleep(0.2)
        assert st is not None, "the run never showed up in the state bucket"
        assert injected_at is not None, f"the run ended before the fault could be injected: {trace}"
        assert st.status in ("completed", "failed"), f"the run did not settle in {timeout}s: {trace}"
        return Outcome(st, recovery, replicas)
    finally:
        await nc.close()


def run_through(tmp_path: Path, url: str, fault: Fault, request: pytest.FixtureRequest) -> Outcome:
    """One run of the paced pipeline through the services on the cluster at `url`, with `fault` mid-run; asserts
    the outcome a user checks: completed, exact rows once each, and a ledger that reconciles with the destination."""
    inputs, pipelines, data = tmp_path / "in", tmp_path / "pipelines", tmp_path / "data"
    inputs.mkdir()
    pipelines.mkdir()
    (pipelines / "crash_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("BATCH", str(BATCH)))
    (inputs / "rows.jsonl").write_text("".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in range(ROWS)))
    settings = JetlSettings(nats=NatsSettings(url=url, stream_replicas=3, ack_wait=5.0))
    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=url, extra_env=dict(ENV)) as stack:
        outcome = asyncio.run(drive(settings, fault))
        stack.check()
        counts = jetl("counts", "crash", "--json", nats_url=url, pipelines_dir=pipelines, env=ENV)
    st = outcome.state
    exact = st.status == "completed" and (st.extracted, st.loaded, st.rejected) == (ROWS, ROWS, 0)
    rows = chdb.query(data / "chdb", QUERY)
    exact = exact and rows == [{"n": ROWS, "u": ROWS, "lo": 0, "hi": ROWS - 1}]
    report_to_fault_matrix(request, exact, outcome.recovery_s)
    print(f"{request.node.name}: loading resumed {outcome.recovery_s} s after the fault")  # shown with -s

    assert st.status == "completed", f"{st.status}: {st.error}"
    assert (st.extracted, st.loaded, st.rejected) == (ROWS, ROWS, 0), st.counts()
    assert st.reconciles
    assert rows == [{"n": ROWS, "u": ROWS, "lo": 0, "hi": ROWS - 1}], rows
    assert counts.code == 0, counts.stdout + counts.stderr
    verdict = counts.json()["verdict"]
    assert verdict["reconciles"] is True and verdict["destination_matches"] is True, verdict
    assert set(outcome.replicas.values()) == {3}, outcome.replicas
    return outcome


def report_to_fault_matrix(request: pytest.FixtureRequest, exact: bool, recovery_s: float | None) -> None:
    """Count this run and its fault (a node killed or cut off) in the session's fault-matrix line; the recovery is
    the time from the fault until batches were loaded again."""
    matrix = request.getfixturevalue("fault_matrix")
    matrix.record_kill()
    matrix.record_run(exact, recovery_s)


def test_a_killed_node_restarts_and_the_run_completes_exactly(
    tmp_path: Path, nats_cluster: ClusterHandle, request: pytest.FixtureRequest
) -> None:
    victim = 1

    def heal() -> None:
        assert nats_cluster.nodes[victim].proc is None  # still down when the run had moved on without it
        nats_cluster.start(victim)

    outcome = run_through(tmp_path, nats_cluster.url, Fault(lambda: nats_cluster.kill(victim), heal), request)
    assert outcome.recovery_s is not None, "no batch was loaded after the node died"
    assert nats_cluster.nodes[victim].alive()


def test_killing_the_raw_stream_leader_elects_another_and_the_run_completes_exactly(
    tmp_path: Path, nats_cluster: ClusterHandle, request: pytest.FixtureRequest
) -> None:
    fault = Fault(inject=lambda: None, heal=lambda: None)

    def inject() -> None:
        leader = nats_cluster.leader("JETL_RAW")
        nats_cluster.kill(leader)
        fault.notes["killed"] = leader
        fault.notes["elected"] = nats_cluster.leader("JETL_RAW", not_=leader)  # waits for the election

    fault.inject = inject
    fault.heal = lambda: nats_cluster.start(fault.notes["killed"])
    run_through(tmp_path, nats_cluster.url, fault, request)
    assert fault.notes["elected"] != fault.notes["killed"]


def test_a_node_cut_off_by_a_network_namespace_heals_and_the_run_completes_exactly(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with partitioned_nats_cluster(tmp_path / "nats-cluster") as cluster:
        cut: list[int] = []

        def heal() -> None:
            cluster.heal()
            cluster.cluster.wait_ready(60)  # the cut node is back in the meta group

        run_through(tmp_path, cluster.url, Fault(lambda: cut.append(cluster.cut()), heal), request)
        assert cut == [2]


def test_streams_and_bucket_are_declared_at_three_replicas_and_never_shrunk_by_a_forgetful_client(
    nats_cluster: ClusterHandle,
) -> None:
    async def go() -> tuple[list[Any], list[Any], dict[str, int]]:
        nc = await connect(NatsSettings(url=nats_cluster.url))
        try:
            first = await declare(nc, NatsSettings(url=nats_cluster.url, stream_replicas=3))  # as the fixture did
            again = await declare(nc, NatsSettings(url=nats_cluster.url))  # JETL_NATS__STREAM_REPLICAS forgotten
            js = nc.jetstream()
            names = [s.name for s in STREAMS.values()] + [f"KV_{STATE_BUCKET}", f"OBJ_{DLQ_BODIES_BUCKET}"]
            return first, again, {n: (await js.stream_info(n)).config.num_replicas for n in names}
        finally:
            await nc.close()

    first, again, replicas = asyncio.run(go())
    assert {c.action for c in first if c.what in ("stream", "kv", "object store")} == {"unchanged"}
    assert set(replicas.values()) == {3}, replicas
    shrunk = [c for c in again if c.what in ("stream", "kv", "object store")]
    assert {c.action for c in shrunk} == {"differs"} and all("num_replicas: 3 -> 1" in c.detail for c in shrunk)


def test_jetl_up_nats_cluster_runs_three_authenticated_nodes_with_everything_at_three_replicas(tmp_path: Path) -> None:
    """`jetl up --nats-cluster 3` as a user runs it: three nodes, each refusing anonymous clients, with every stream
    and the state bucket deployed at three replicas, and the four services started."""
    (tmp_path / "pipelines").mkdir()
    data = tmp_path / "data"
    with jetl_up("--nats-cluster", "3", data_dir=data, pipelines_dir=tmp_path / "pipelines", until="services:") as seen:
        seeds = re.findall(r"nats://127\.0\.0\.1:\d+", (data / "context.json").read_text())  # the output redacts
        assert len(seeds) == 3, seen
        assert "JETL_NATS__STREAM_REPLICAS=3" in seen
        users = json.loads((data / "nats" / USERS_FILE).read_text())

        async def look() -> dict[str, int]:
            for url in seeds:
                with pytest.raises(Exception, match=r"(?i)authorization violation"):
                    await nats.connect(url, allow_reconnect=False, connect_timeout=2)
            nc = await connect(NatsSettings(url=",".join(seeds), user="operator", password=users["operator"]))
            try:
                js = nc.jetstream()
                names = [s.name for s in STREAMS.values()] + [f"KV_{STATE_BUCKET}", f"OBJ_{DLQ_BODIES_BUCKET}"]
                return {n: (await js.stream_info(n)).config.num_replicas for n in names}
            finally:
                await nc.close()

        assert set(asyncio.run(look()).values()) == {3}
