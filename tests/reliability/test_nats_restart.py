"""Clients that ride through a NATS restart, and waits that say what they waited for.

- `jetl run` (a real subprocess) is waiting on a run when NATS is SIGKILLed and started again: the services finish
  the run, the command notices (it resumes after the last event it saw) and exits 0 with the exact counts.
- A wait that gives up names the run and the last event it saw; "is NATS running?" only when NATS is down.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jetl import subjects
from jetl.bus import connect
from jetl.events import RunCompleted, RunFailed
from jetl.ops.client import JetlClient
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings, NatsSettings
from jetl.subjects import Kind
from jetl.testing.servers import NatsHandle
from jetl.topology import declare

from .conftest import BATCH, PIPELINE  # the crash lab's paced pipeline, `crash`

pytestmark = [pytest.mark.integration]

ROWS = 1000  # 40 batches of 25


def crash_pipelines(tmp_path: Path) -> Path:
    """A pipelines folder holding the `crash` pipeline, so `jetl run crash` passes its local check (no services)."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    text = PIPELINE.replace("INPUT", str(tmp_path / "in")).replace("BATCH", str(BATCH))
    (folder / "crash_pipeline.py").write_text(text)
    return folder


def jetl_cli(nats_url: str, pipelines: Path, *args: str) -> subprocess.Popen[str]:
    """`jetl ARGS` as a separate process, as a person would type it."""
    env = {
        **os.environ,
        "JETL_NATS__URL": nats_url,
        "JETL_PIPELINES_DIR": str(pipelines),
        "NO_COLOR": "1",
        "COLUMNS": "400",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "jetl", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_jetl_run_rides_through_a_nats_restart(crash_lab: Any, fault_matrix: Any) -> None:
    run_id = "crash-natsrestart1"
    outcome: dict[str, Any] = {}

    async def go() -> None:
        with crash_lab.stack() as stack:
            async with JetlClient(crash_lab.settings) as jc:
                crash_lab.add_input(ROWS)  # a first run, so the services are up before the one NATS goes under
                await asyncio.wait_for(crash_lab.run(jc, stack), 120)
                crash_lab.add_input(ROWS)
                cli = jetl_cli(crash_lab.nats.url, crash_lab.pipelines, "run", "crash", "--run-id", run_id, "--json")
                state: RunState | None = None
                restarted = False
                async for ev in jc.follow("crash", run_id):  # this follower rides through the restart too
                    state = fold(state, ev)
                    loaded = sum(1 for b in state.batches.values() if b.outcome == "loaded")
                    if not restarted and loaded >= 10:
                        crash_lab.nats.stop(kill=True)
                        await asyncio.sleep(3)
                        crash_lab.nats.start()
                        restarted = True
                    if isinstance(ev, RunCompleted | RunFailed):
                        break
                assert restarted, "the run ended before NATS could be restarted"
                out, err = await asyncio.to_thread(cli.communicate, timeout=120)
                outcome.update(code=cli.returncode, out=out, err=err, state=state)
                by_run = (await jc.destination_count("crash")).by_run
                outcome["by_run"] = by_run

    asyncio.run(go())
    state = outcome["state"]
    report = json.loads(outcome["out"]) if outcome["code"] == 0 else {}
    exact = (
        outcome["code"] == 0
        and report.get("status") == "completed"
        and (report.get("extracted"), report.get("loaded"), report.get("rejected")) == (ROWS, ROWS, 0)
        and report.get("reconciles") is True
        and (outcome["by_run"] or {}).get(run_id) == ROWS
    )
    fault_matrix.record_kill()
    fault_matrix.record_run(exact)
    assert outcome["code"] == 0, outcome["err"]
    assert report["status"] == "completed" and report["reconciles"], report
    assert (report["extracted"], report["loaded"], report["rejected"]) == (ROWS, ROWS, 0), report
    assert state.status == "completed" and state.reconciles
    assert outcome["by_run"][run_id] == ROWS
    assert crash_lab.destination() == {"n": 2 * ROWS, "u": 2 * ROWS, "lo": 0, "hi": 2 * ROWS - 1}


async def _deploy(url: str) -> None:
    nc = await connect(NatsSettings(url=url))
    try:
        await declare(nc, NatsSettings(url=url))
    finally:
        await nc.close()


def test_a_wait_that_gives_up_says_what_it_waited_for_and_nats_is_not_blamed(tmp_path: Path, nats: NatsHandle) -> None:
    asyncio.run(_deploy(nats.url))  # streams, but no services: the run is requested and nothing happens
    cli = jetl_cli(nats.url, crash_pipelines(tmp_path), "run", "crash", "--run-id", "crash-nobody1", "--timeout", "2")
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 1, err
    assert "crash-nobody1 did not finish within 2 s; last seen: run.requested 0/? batches" in err, err
    assert "NATS is up" in err and "is NATS running" not in err, err


def test_a_wait_that_gives_up_while_nats_is_down_says_so(tmp_path: Path, nats: NatsHandle) -> None:
    asyncio.run(_deploy(nats.url))
    # the timeout only has to outlast the poll below (run.requested is in the log, then NATS goes down): the command
    # then waits it out with NATS down
    cli = jetl_cli(nats.url, crash_pipelines(tmp_path), "run", "crash", "--run-id", "crash-down1", "--timeout", "10")
    deadline = time.monotonic() + 30
    while not asyncio.run(_requested(nats.url, "crash-down1")):  # then the command is waiting on the run
        assert time.monotonic() < deadline, "jetl run never requested its run"
        time.sleep(0.2)
    nats.stop()
    try:
        _, err = cli.communicate(timeout=60)
    finally:
        nats.start()
    assert cli.returncode == 3, err
    assert "crash-down1 did not finish within 10 s" in err and "does not answer" in err, err
    assert "is NATS running?" in err, err


async def _requested(url: str, run_id: str) -> bool:
    """run.requested is in the log and the request is queued: `jetl run` has only its wait left."""
    async with JetlClient(JetlSettings(nats=NatsSettings(url=url))) as jc:
        subject = subjects.run_request("crash")  # nothing else requests runs here: one message is this run's
        info = await jc.conn.jetstream().stream_info(subjects.stream_name(Kind.RUN), subjects_filter=subject)
        return bool(await jc.events(run_id, "crash")) and bool((info.state.subjects or {}).get(subject))


async def _ship(url: str, run_id: str, *events: str) -> None:
    """Log lines of `run_id`, shipped as the services ship theirs."""
    nc = await connect(NatsSettings(url=url))
    try:
        js = nc.jetstream()
        for e in events:
            line = {"timestamp": f"2026-11-28T10:00:0{e[-1]}Z", "service": "loader", "level": "info", "event": e}
            body = json.dumps(line | {"run_id": run_id}).encode()
            for attempt in range(40):  # just after a restart JetStream may not answer yet
                try:
                    await js.publish(subjects.logs("crash", run_id), body, headers={"Nats-Msg-Id": e})
                    break
                except Exception:
                    if attempt == 39:
                        raise
                    await asyncio.sleep(0.5)
    finally:
        await nc.close()


def test_logs_follow_rides_through_a_nats_restart(tmp_path: Path, nats: NatsHandle) -> None:
    asyncio.run(_deploy(nats.url))
    asyncio.run(_ship(nats.url, "crash-logs1", "line1", "line2"))
    cli = jetl_cli(nats.url, tmp_path, "logs", "crash-logs1", "--json", "--follow", "--for", "12")
    assert cli.stdout is not None
    printed = [cli.stdout.readline(), cli.stdout.readline()]  # the kept lines: now it follows
    asyncio.run(_ship(nats.url, "crash-logs1", "line3"))
    nats.stop(kill=True)
    time.sleep(2)
    nats.start()
    asyncio.run(_ship(nats.url, "crash-logs1", "line4", "line5"))
    out, err = cli.communicate(timeout=90)
    assert cli.returncode == 0, err
    lines = printed + out.splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["line1", "line2", "line3", "line4", "line5"]
