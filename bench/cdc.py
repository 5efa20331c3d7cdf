"""Change data capture end to end: PostgreSQL changes per second from the slot to ClickHouse (chdb), through the
four services (docs/cdc.md).

    uv run python bench/cdc.py [--rows 100000 --updates 20000 --deletes 5000] [--dsn postgresql://postgres@127.0.0.1:5432/test]

A fresh table of `--rows` rows is snapshotted by a first run (timed on its own: rows/s). Then the changes are made in
transactions of 1,000 statements' worth (inserts of new ids, updates, deletes) and ONE run is requested: its time,
from the request to run.completed (every batch loaded, the slot confirmed), gives changes/s end to end. The run's
extracted count must equal the changes made, the destination must equal the table (count and a checksum), and the
slot's retained WAL once caught up is printed. The stack runs on an embedded nats-server in a temporary folder; the
table, its publication and its slot are dropped afterwards.

Then (unless `--shares 0`) a second table of the same rows is snapshotted by `--replicas` extractor replicas in
`--shares` shares of one exported snapshot (`partition_bytes` = the table's heap / shares), and the ratio of the two
snapshot rates is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

PIPELINE = """
from pydantic import BaseModel
from jetl import ClickHouseLoader, Pipeline, PostgresCDCExtractor

class Row(BaseModel):
    id: int
    note: str | None = None
    amount: int | None = None
    deleted: bool = False

def register_pipelines():
    return [Pipeline(name="bench_cdc", extractors=[PostgresCDCExtractor(DSN, TABLE, slot=TABLE, chunk_size=5000,
                                                                                partition_bytes=SHARE)],
                     loader=ClickHouseLoader("bench_cdc"), schema=Row, primary_key=["id"], deletes="deleted",
                     batch_size=BATCH)]
"""


def make_changes(dsn: str, table: str, rows: int, updates: int, deletes: int, per_tx: int = 1000) -> int:
    """Inserts of `rows // 5` new ids, `updates` updates and `deletes` deletes, interleaved by transaction; the number
    of row changes made."""
    inserts = rows // 5
    made = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, inserts, per_tx):
            stop = min(inserts, start + per_tx)
            conn.execute(
                f"INSERT INTO {table} SELECT i, 'new', i FROM generate_series(%s::bigint, %s::bigint) i",
                (rows + start, rows + stop - 1),
            )
            made += stop - start
        for start in range(0, updates, per_tx):  # ids spread over the table, each updated once
            stop = min(updates, start + per_tx)
            cur = conn.execute(
                f"UPDATE {table} SET note = 'upd', amount = amount + 1 WHERE id IN "
                f"(SELECT i * {max(1, rows // max(1, updates))} FROM generate_series(%s::bigint, %s::bigint) i)",
                (start, stop - 1),
            )
            made += cur.rowcount
        for start in range(0, deletes, per_tx):
            stop = min(deletes, start + per_tx)
            step = max(1, rows // max(1, deletes))
            cur = conn.execute(
                f"DELETE FROM {table} WHERE id IN "
                f"(SELECT i * {step} + 1 FROM generate_series(%s::bigint, %s::bigint) i)",
                (start, stop - 1),
            )
            made += cur.rowcount
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=20_000)
    ap.add_argument("--deletes", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--shares", type=int, default=8, help="shares of the second snapshot (0: none)")
    ap.add_argument("--replicas", type=int, default=2, help="extractor replicas reading them")
    args = ap.parse_args()
    snap_rate = changes(args)
    if args.shares:
        shares(args, snap_rate)


def fresh(args: argparse.Namespace, work: Path, share: int) -> str:
    """A new table of `--rows` rows and the pipeline reading it (its snapshot in shares of `share` bytes); its name."""
    table = f"bench_cdc_{uuid.uuid4().hex[:8]}"
    (work / "pipelines").mkdir()
    text = PIPELINE.replace("DSN", repr(args.dsn)).replace("TABLE", repr(table)).replace("BATCH", str(args.batch))
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, note text, amount bigint)")
        conn.execute(f"INSERT INTO {table} SELECT i, 'snap', i FROM generate_series(0, %s::bigint) i", (args.rows - 1,))
        if share == 0:
            share = 1 << 62
        elif share < 0:  # so many shares: the heap's size over them
            row = conn.execute("SELECT pg_relation_size(%s::regclass)", (table,)).fetchone()
            assert row is not None
            share = max(8192, int(row[0]) // -share + 1)
    (work / "pipelines" / "bench_cdc_pipeline.py").write_text(text.replace("SHARE", str(share)))
    return table


def drop(args: argparse.Namespace, table: str) -> None:
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (table,)
        )
        conn.execute(f"DROP PUBLICATION IF EXISTS {table}")
        conn.execute(f"DROP TABLE IF EXISTS {table}")


async def one_run(stack: Any) -> tuple[float, int, int | None, float]:
    """(seconds from request to completed, records extracted, partitions, seconds from request to the last batch
    extracted) of one run."""
    from jetl.events import BatchExtracted
    from jetl.ops.client import JetlClient
    from jetl.settings import JetlSettings

    last: list[datetime] = []

    def seen(ev: Any, _: Any) -> None:
        if isinstance(ev, BatchExtracted):
            last.append(ev.at)

    async with JetlClient(JetlSettings(nats=stack.operator)) as jc:
        asked = datetime.now(UTC)
        req = await jc.request_run("bench_cdc")
        t0 = time.perf_counter()
        state = await jc.wait("bench_cdc", req.run_id, timeout=3600, on_event=seen)
        seconds = time.perf_counter() - t0
        if state.status != "completed":
            raise RuntimeError(f"run {state.run_id} ended {state.status}: {state.error}")
        extracted = (max(last) - asked).total_seconds() if last else 0.0
        return seconds, state.extracted, state.partitions, extracted


def shares(args: argparse.Namespace, whole_rate: tuple[float, float]) -> None:
    """The same snapshot by `--replicas` extractors in `--shares` shares; the ratio to the whole one's rate."""
    from jetl.cli.demo import wait_ready
    from jetl.stack.embedded import Stack

    work = Path(tempfile.mkdtemp(prefix="jetl-bench-cdc-"))
    table = fresh(args, work, -args.shares)
    stack = Stack(
        data_dir=work / "data",
        pipelines_dir=work / "pipelines",
        replicas={"extractor": args.replicas},
        extra_env={"JETL_LOG_LEVEL": "WARNING"},
    )
    try:
        stack.start()
        asyncio.run(wait_ready(stack))
        seconds, n, parts, extract_s = asyncio.run(one_run(stack))
        assert n == args.rows, f"the snapshot extracted {n} rows of {args.rows}"
        rate = n / seconds
        print(
            f"snapshot in {parts} shares by {args.replicas} extractors: {n} rows in {seconds:.1f} s = "
            f"{rate:,.0f} rows/s ({rate / whole_rate[0]:.2f}x the whole snapshot's rate); extracted in "
            f"{extract_s:.1f} s ({whole_rate[1] / extract_s:.2f}x the whole snapshot's extraction rate)"
        )
    finally:
        stack.stop()
        drop(args, table)
        shutil.rmtree(work, ignore_errors=True)


def changes(args: argparse.Namespace) -> tuple[float, float]:
    """The snapshot read whole, then the changes; the snapshot's rates (rows/s loaded, extraction seconds)."""

    from jetl.cli.demo import wait_ready
    from jetl.stack.embedded import Stack
    from jetl.testing import chdb

    work = Path(tempfile.mkdtemp(prefix="jetl-bench-cdc-"))
    table = fresh(args, work, 0)
    stack = Stack(data_dir=work / "data", pipelines_dir=work / "pipelines", extra_env={"JETL_LOG_LEVEL": "WARNING"})

    try:
        stack.start()
        asyncio.run(wait_ready(stack))
        snap_s, snap_n, _, snap_x = asyncio.run(one_run(stack))
        print(
            f"snapshot: {snap_n} rows in {snap_s:.1f} s = {snap_n / snap_s:,.0f} rows/s (extracted in {snap_x:.1f} s)"
        )
        t0 = time.perf_counter()
        made = make_changes(args.dsn, table, args.rows, args.updates, args.deletes)
        print(f"changes made in PostgreSQL: {made} in {time.perf_counter() - t0:.1f} s")
        run_s, run_n, _, _ = asyncio.run(one_run(stack))
        assert run_n == made, f"the run extracted {run_n} changes, {made} were made"
        print(f"changes: {run_n} in {run_s:.1f} s = {run_n / run_s:,.0f} changes/s end to end (request to loaded)")
        asyncio.run(one_run(stack))  # caught up: the slot moves to this run's marker
        with psycopg.connect(args.dsn) as conn:
            row = conn.execute(f"SELECT count(*), coalesce(sum(amount), 0) FROM {table}").fetchone()
            retained = conn.execute(
                "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (table,),
            ).fetchone()
        stack.stop()  # the loader owns the chdb folder while it runs
        assert row is not None and retained is not None
        got = chdb.query(
            work / "data" / "chdb",
            "SELECT count() AS n, sum(amount) AS s FROM (SELECT * FROM bench_cdc FINAL WHERE _jetl_deleted = 0)",
        )
        print(f"destination: {json.dumps(got)}  source: count {row[0]}, sum(amount) {row[1]}")
        print(f"slot retained WAL once caught up: {int(retained[0]):,} bytes")
    finally:
        stack.stop()
        drop(args, table)
        shutil.rmtree(work, ignore_errors=True)
    return snap_n / snap_s, snap_x


if __name__ == "__main__":
    main()
