"""How fast the dashboard's pages render with 10,000 runs and 100,000 dead letters (a script, not a timed test).

Starts its own nats-server, declares jetl's streams, seeds run states into the state bucket and dead letters into
JETL_DLQ (published without waiting for each ack, then flushed), serves the dashboard with uvicorn on a free loopback
port and times each page over HTTP (median and worst of a few requests):

    uv run python bench/ui_pages.py [--runs 10000] [--letters 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn

from jetl.bus import connect
from jetl.messages.deadletter import DeadLetter
from jetl.projection import BatchState, RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import free_port
from jetl.state import bucket, run_key
from jetl.subjects import dlq
from jetl.testing.servers import nats_server
from jetl.topology import declare
from jetl.ui.app import create_app

PIPELINE = """
from pydantic import BaseModel
from jetl import Cron, FileExtractor, FileLoader, Pipeline

class Row(BaseModel):
    id: int

def register_pipelines():
    return [Pipeline(name=n, extractors=[FileExtractor("/nonexistent/*.jsonl")], loader=FileLoader("/tmp/out"),
                     schema=Row, schedule=Cron("0 * * * *")) for n in ("bench_a", "bench_b")]
"""


async def seed(url: str, runs: int, letters: int) -> tuple[str, str]:
    """Write `runs` run states and `letters` dead letters; returns one run's (pipeline, run id)."""
    s = NatsSettings(url=url)
    nc = await connect(s)
    await declare(nc, s)
    kv = await bucket(nc)
    t0 = datetime.now(UTC) - timedelta(days=30)
    sample = ("", "")
    for i in range(runs):
        p = ("bench_a", "bench_b")[i % 2]
        rid = f"{p}-{i:06d}"
        st = RunState(
            pipeline=p,
            run_id=rid,
            status="failed" if i % 50 == 0 else "completed",
            requested_at=t0 + timedelta(minutes=i),
            finished_at=t0 + timedelta(minutes=i, seconds=20),
            expected_batches=4,
            batches={
                f"{rid}/{k:06d}": BatchState(seq=k, extracted=250, transformed=248, rejected=2, loaded=248)
                for k in range(4)
            },
        )
        # the KV bucket is a stream: a core publish to its subject is a put, without a round trip per key
        await nc.publish(f"$KV.{kv._stream.removeprefix('KV_')}.{run_key(p, rid)}", st.model_dump_json().encode())
        sample = (p, rid)
        if i % 2000 == 0:
            await nc.flush()
    for i in range(letters):
        p = ("bench_a", "bench_b")[i % 2]
        dl = DeadLetter(
            pipeline=p,
            run_id=f"{p}-{i % runs:06d}",
            batch_id=f"{p}-{i % runs:06d}/000001",
            stage="transform",
            reason="bad record",
            error_type="RecordError",
            records=[
                {
                    "index": i,
                    "origin": f"orders-{i // 1000}.jsonl:{i % 1000 + 1}",
                    "field": ("amount", "id", "ordered_at")[i % 3],
                    "message": ("Input should be a valid number", "Field required", "Invalid datetime")[i % 3],
                    "record": {"id": i, "amount": "n/a"},
                }
            ],
        )
        await nc.publish(dlq(p, "transform"), dl.model_dump_json().encode())
        if i % 2000 == 0:
            await nc.flush()
    await nc.flush()
    await asyncio.sleep(1.0)
    await nc.close()
    return sample


async def measure(url: str, pipelines: Path, sample: tuple[str, str], repeat: int) -> None:
    """Serve the dashboard and time its pages."""
    s = JetlSettings(nats=NatsSettings(url=url), pipelines_dir=pipelines)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(s), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    p, rid = sample
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        t = time.perf_counter()
        while True:  # the dashboard's own summary of JETL_DLQ catches up in the background
            r = await http.get("/dlq")
            if "still counting" not in r.text:
                break
            await asyncio.sleep(0.5)
        print(f"dead-letter summary caught up with the stream in {time.perf_counter() - t:.1f}s (once per process)")
        t = time.perf_counter()
        while "Still indexing runs" in (await http.get("/runs?status=failed")).text:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        print(f"run index caught up with the state bucket in {time.perf_counter() - t:.1f}s (once per process)")
        runs_page = (await http.get("/runs")).text
        before = runs_page.split("before=")[1].split('"')[0] if "before=" in runs_page else ""
        pages = [
            "/",
            "/runs",
            f"/runs?before={before}",
            "/runs?status=failed",
            "/runs?status=failed&pipeline=bench_a",  # bench_b has none: every 50th run failed, all of bench_a
            f"/runs?pipeline={p}",
            f"/runs/{p}/{rid}",
            f"/pipelines/{p}",
            "/dlq",
            f"/dlq?pipeline={p}",
            f"/dlq?pipeline={p}&start=90000",
            f"/dlq?pipeline={p}&reason=transform%3A+amount%3A+Input+should+be+a+valid+number",
            "/diff",
        ]
        print(f"{'page':<72} {'median ms':>9} {'worst ms':>9}")
        for path in pages:
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                r = await http.get(path)
                times.append((time.perf_counter() - t) * 1e3)
                assert r.status_code == 200, (path, r.status_code, r.text[:300])
            print(f"{path:<72} {statistics.median(times):>9.1f} {max(times):>9.1f}")
    server.should_exit = True
    await task


def main() -> None:
    """Seed, serve, measure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--letters", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, nats_server(Path(tmp) / "nats") as nats:
        pipelines = Path(tmp) / "pipelines"
        pipelines.mkdir()
        (pipelines / "bench_pipeline.py").write_text(PIPELINE)
        t = time.perf_counter()
        sample = asyncio.run(seed(nats.url, args.runs, args.letters))
        print(f"seeded {args.runs} runs and {args.letters} dead letters in {time.perf_counter() - t:.1f}s")
        asyncio.run(measure(nats.url, pipelines, sample, args.repeat))


if __name__ == "__main__":
    main()
