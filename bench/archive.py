"""The raw-batch archive: how fast batches are archived, how small they get, and how fast a replay reads a run back
from the archive against from JETL_RAW.

    uv run python bench/archive.py [--records N] [--batch-size N]

The records are the benchmark's orders (bench/common.py: id, ts, user, amount, country, a 40-hex random payload), cut
into raw batches as the extractor publishes them (envelope line + JSON lines). Printed:

- archive: MB/s of raw messages written by `Archive.put` (zstd, SHA-256, temp + fsync + rename, one object a batch)
  into a folder, and the compression ratio (message bytes / object bytes);
- replay read: records/s of `jetl.archive.read_raw` over one run, from a real nats-server's JETL_RAW (the batches
  published and not yet acked) and from the archive (the stream purged), each read decoded into (Batch, body) as a
  replay does before republishing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import generate  # noqa: E402

from jetl import subjects  # noqa: E402
from jetl.archive import Archive, read_raw  # noqa: E402
from jetl.bus import connect  # noqa: E402
from jetl.messages.models import Batch  # noqa: E402
from jetl.messages.wire import encode_batch  # noqa: E402
from jetl.settings import NatsSettings  # noqa: E402
from jetl.subjects import Kind  # noqa: E402
from jetl.testing.servers import deployed, nats_server  # noqa: E402

PIPELINE, RUN = "bench_orders", "bench-archive"


def batches(path: Path, batch_size: int) -> list[tuple[Batch, bytes]]:
    """The input cut into raw messages of `batch_size` records."""
    lines = path.read_bytes().splitlines(keepends=True)
    out = []
    for seq, start in enumerate(range(0, len(lines), batch_size)):
        chunk = lines[start : start + batch_size]
        batch = Batch(pipeline=PIPELINE, run_id=RUN, seq=seq, schema_name="Order", schema_hash="h", count=len(chunk))
        out.append((batch, encode_batch(batch, b"".join(chunk))))
    return out


async def read_rate(url: str, archive: Archive | None) -> tuple[int, float]:
    nc = await connect(NatsSettings(url=url))
    try:
        t = time.perf_counter()
        records = 0
        async for batch, body in read_raw(nc, archive, PIPELINE, RUN):
            records += batch.count
            assert body
        return records, time.perf_counter() - t
    finally:
        await nc.close()


async def publish(url: str, messages: list[tuple[Batch, bytes]]) -> None:
    nc = await connect(NatsSettings(url=url))
    try:
        js = nc.jetstream()
        for batch, data in messages:
            await js.publish(subjects.raw(PIPELINE, RUN), data, headers={"Nats-Msg-Id": batch.part_id})
    finally:
        await nc.close()


async def purge(url: str) -> int:
    nc = await connect(NatsSettings(url=url))
    try:
        js = nc.jetstream()
        await js.purge_stream(subjects.stream_name(Kind.RAW), subject=subjects.raw(PIPELINE, RUN))
        return (await js.stream_info(subjects.stream_name(Kind.RAW))).state.messages
    finally:
        await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=5_000)  # ~0.8 MB: under max_payload, as the extractor cuts
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jetl-bench-archive-"))
    try:
        source = work / "orders.jsonl"
        generate(source, args.records)
        messages = batches(source, args.batch_size)
        size = sum(len(d) for _, d in messages)

        archive = Archive(str(work / "archive"))
        t = time.perf_counter()
        for batch, data in messages:
            archive.put(PIPELINE, RUN, batch.part_id, data)
        took = time.perf_counter() - t
        stored = archive.usage().used
        print(f"input: {args.records} records in {len(messages)} raw batches, {size / 1e6:.1f} MB of messages")
        print(f"archive: {size / 1e6 / took:.1f} MB/s written ({len(messages) / took:.0f} batches/s)")
        print(f"archive: compression ratio {size / stored:.2f} ({size / 1e6:.1f} MB -> {stored / 1e6:.1f} MB)")

        with nats_server(work / "nats") as server:
            deployed(server.url, stream_max_bytes={"raw": max(2 * size, 64 * 1024 * 1024)})
            asyncio.run(publish(server.url, messages))
            n, stream_s = asyncio.run(read_rate(server.url, None))
            assert n == args.records, n
            assert asyncio.run(purge(server.url)) == 0
            n, archive_s = asyncio.run(read_rate(server.url, archive))
            assert n == args.records, n
        print(f"replay read from JETL_RAW: {args.records / stream_s:,.0f} records/s ({stream_s:.2f} s)")
        print(f"replay read from the archive: {args.records / archive_s:,.0f} records/s ({archive_s:.2f} s)")
        print(f"ratio archive/stream: {stream_s / archive_s:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
