"""How long a run takes to recover from a SIGKILLed service: each stage's service is killed at run start (after the
run's first batch.extracted) and started again at once, as `jetl up`'s supervisor does (its first backoff is 0.5 s),
and the run's duration is compared with an unkilled one.

    uv run python bench/recovery.py [--service transformer] [--rounds 3] [--ack-wait 10] [--replicas 1]

It prints, per round, the killed run's duration beside an unkilled one's (run just before it: the host's load
drifts), then the median recovery. A dead worker's messages come back to a live replica after the ack wait, counted
from the last in_progress() beat it sent (every third of the ack wait); with one process they wait for its restart,
whose start-up is the delay (docs/operations.md, Supervision, has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from jetl.events import RunCompleted, RunFailed
from jetl.ops.client import JetlClient
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing.servers import NatsServer

PIPELINE = """
import time
from pydantic import BaseModel
from jetl import FileExtractor, FileLoader, Pipeline

class Row(BaseModel):
    id: int
    name: str

class Slow:
    def transform(self, records):
        time.sleep(0.05)
        return records

def register_pipelines():
    return [Pipeline(name="recover", extractors=[FileExtractor("INPUT/*.jsonl", chunk_size=25)],
                     transformers=[Slow()], loader=FileLoader("OUTPUT"), schema=Row, batch_size=25)]
"""


async def one_run(jc: JetlClient, stack: Stack, inputs: Path, n: int, victim: str | None) -> float:
    """Seconds from the run's request to its end (SIGKILLing `victim` at its first batch.extracted)."""
    (inputs / f"part{n:03d}.jsonl").write_text(
        "".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in range(n * 1000, n * 1000 + 1000))
    )
    started = time.monotonic()
    req = await jc.request_run("recover")
    state: RunState | None = None
    killed = False
    async for ev in jc.follow("recover", req.run_id):
        state = fold(state, ev)
        if victim and not killed and ev.type == "batch.extracted":
            proc = stack.procs[victim]
            proc.stop(kill=True)
            killed = True
            await asyncio.sleep(0.5)  # the supervisor's first backoff
            proc.start()
        if isinstance(ev, (RunCompleted, RunFailed)):
            break
    assert state is not None and state.status == "completed", state and state.error
    return time.monotonic() - started


async def main(service: str, rounds: int, ack_wait: float, replicas: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="jetl-recovery-"))
    inputs, out, pipelines = root / "in", root / "out", root / "pipelines"
    for d in (inputs, out, pipelines):
        d.mkdir()
    (pipelines / "recover_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(out)))
    server = NatsServer(root / "nats").start()
    extra = {"JETL_NATS__ACK_WAIT": str(ack_wait)}
    try:
        with Stack(
            data_dir=root / "data",
            pipelines_dir=pipelines,
            nats_url=server.url,
            extra_env=extra,
            replicas={service: replicas},
        ) as stack:
            settings = JetlSettings(nats=NatsSettings(url=server.url, ack_wait=ack_wait))
            async with JetlClient(settings) as jc:
                await one_run(jc, stack, inputs, 0, None)  # the first run pays the services' first-batch costs
                recoveries = []
                for r in range(rounds):  # a baseline beside each killed run: the host's load drifts
                    base = await one_run(jc, stack, inputs, 1 + 2 * r, None)
                    took = await one_run(jc, stack, inputs, 2 + 2 * r, service)
                    recoveries.append(took - base)
                    print(f"{service} killed at run start: run {took:.1f} s against {base:.1f} s unkilled")
                print(
                    f"recovery (killed less unkilled), ack wait {ack_wait:g} s, {replicas} {service} process(es): "
                    f"median {statistics.median(recoveries):.1f} s, {min(recoveries):.1f}-{max(recoveries):.1f} s"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--service", default="transformer")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ack-wait", type=float, default=10.0)
    ap.add_argument("--replicas", type=int, default=1, help="processes of the killed service (one is killed)")
    a = ap.parse_args()
    asyncio.run(main(a.service, a.rounds, a.ack_wait, a.replicas))
