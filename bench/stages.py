"""Each stage's own work on the reference job, without NATS: CPU microseconds per record, stage by stage.

    uv run python bench/stages.py [--records 300000] [--gc service|on|off]

It calls the code the services run per batch (the file extractor and the raw-batch encoding; decoding and
`jetl.transformers.chain.run_transformers`; the loader's `jetl.loaders.batch.load_batch`), so it shows which stage
limits the pipeline and what each step costs, free of the noise of the other processes; then bench/direct.py's job on
the same input, for scale. CPU time, not wall time: on a busy machine it still adds up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "pipelines"))
from common import PIPELINE, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument(
        "--gc",
        choices=["on", "off", "service"],
        default="service",
        help="service: as the stage processes run (jetl.runtime.heap.freeze_heap)",
    )
    ap.add_argument("--data", type=Path, default=BENCH / ".data")
    args = ap.parse_args()

    import os

    work = Path(tempfile.mkdtemp(prefix="jetl-stages-"))
    (work / "input").mkdir()
    args.data.mkdir(parents=True, exist_ok=True)
    source = args.data / f"orders_{args.records}.jsonl"
    generate(source, args.records)
    os.link(source, work / "input" / "orders.jsonl")
    os.environ["JETL_DATA_DIR"] = str(work)

    import bench_pipeline

    from jetl.loaders.batch import load_batch
    from jetl.messages.models import Batch
    from jetl.messages.wire import decode_batch, encode_batch
    from jetl.protocols import ExtractContext
    from jetl.transformers.chain import run_transformers

    pipeline = bench_pipeline.register_pipelines()[0]
    assert pipeline.name == PIPELINE
    pipeline.loader.open(f"chdb://{work / 'chdb'}")  # type: ignore[attr-defined]
    pipeline.loader.ensure_table(pipeline.schema)  # type: ignore[attr-defined]
    load_batch(
        pipeline, Batch(pipeline=PIPELINE, run_id="warm", seq=0, schema_name="Order", schema_hash="", count=0), b"[]"
    )
    import datetime

    import pyarrow as pa

    pa.array([datetime.datetime.now(datetime.UTC)], type=pa.timestamp("us", tz="UTC"))
    gc.collect()
    if args.gc == "off":
        gc.disable()
    elif args.gc == "service":
        from jetl.runtime import heap

        heap.freeze_heap()

    costs: dict[str, float] = {}

    def timed(name: str, fn: Any, *a: Any) -> Any:
        t0 = time.process_time()
        out = fn(*a)
        costs[name] = costs.get(name, 0.0) + time.process_time() - t0
        return out

    async def extract() -> list[Any]:
        chunks = []
        it = pipeline.extractors[0].extract(ExtractContext(pipeline=PIPELINE, run_id="r", raw_json=True))
        while True:
            t0 = time.process_time()
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            costs["extract: read"] = costs.get("extract: read", 0.0) + time.process_time() - t0
            chunks.append(chunk)
        return chunks

    chunks = asyncio.run(extract())
    payloads = []
    for seq, chunk in enumerate(chunks):
        batch = timed(
            "extract: envelope",
            lambda c=chunk, s=seq: Batch(
                pipeline=PIPELINE,
                run_id="r",
                seq=s,
                schema_name="RawOrder",
                schema_hash=pipeline.schema_hash,
                count=c.count,
                origins=None if c.origin_runs else c.origins,
                origin_runs=c.origin_runs,
            ),
        )
        payloads.append(timed("extract: encode", encode_batch, batch, chunk.items))  # as the extractor service does
    del chunks
    cleans = []
    for payload in payloads:
        batch, body = timed("transform: decode envelope", decode_batch, payload)
        clean, encoding, *_ = timed(
            "transform: transformers + schema + encode", run_transformers, pipeline, body, batch.count
        )
        cleans.append((batch.model_copy(update={"encoding": encoding, "schema_hash": pipeline.schema_hash}), clean))
    del payloads
    for batch, clean in cleans:
        timed("load: validate + insert", load_batch, pipeline, batch, clean)
    import direct

    client = pipeline.loader.client()  # type: ignore[attr-defined]
    client.command(direct.ddl("direct_orders"))
    t0 = time.process_time()
    direct.run("arrow", work / "input" / "orders.jsonl", client, 30_000, table="direct_orders")
    costs["direct: the whole job in one process"] = time.process_time() - t0
    n = args.records
    total: dict[str, float] = {}
    for name, seconds in costs.items():
        stage = name.split(":")[0]
        total[stage] = total.get(stage, 0.0) + seconds
        print(f"  {name:45s} {seconds / n * 1e6:6.2f} us/record")
    for stage, seconds in total.items():
        print(f"{stage:47s} {seconds / n * 1e6:6.2f} us/record  ({n / seconds:,.0f} records/s on one core)")
    from jetl.loaders.clickhouse import close_clients

    close_clients()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
