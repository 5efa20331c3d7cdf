"""The reference job into PostgreSQL: jetl with 1, 2 and 4 loader replicas against one process that COPYs the same
records with psycopg (issue 24; goal: at least 0.9x that script with one loader).

    uv run python bench/postgres.py --records 1000000 [--dsn postgresql://postgres@127.0.0.1:5432/test]

Both sides start from the same JSONL file (`bench/common.py`, seeded) and end with the same rows in a fresh table,
checked by count and checksums. The script is what a user would write without jetl: read lines, parse (orjson),
rename, compute `amount_cents`, `COPY ... FROM STDIN` through psycopg's `write_row`, one transaction per 30,000
rows. jetl's time is the run's wall time, from the request to the run completed (the stack started and warmed up
before it: a run of 20,000 records per loader replica first, into another table). Each jetl configuration gets its
own schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import Expected, amount_cents, generate  # noqa: E402

COLUMNS = "id, ts, user_id, amount, country, amount_cents"
DDL = (
    "CREATE TABLE {t} (id bigint NOT NULL, ts timestamptz NOT NULL, user_id text NOT NULL, amount double precision"
    " NOT NULL, country text NOT NULL, amount_cents bigint NOT NULL)"
)


def checksums(dsn: str, table: str) -> tuple[int, int, int]:
    """(count, sum(amount_cents), sum(id * amount_cents) mod 2**61) of `table`."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT count(*), coalesce(sum(amount_cents), 0), coalesce(sum(id::numeric * amount_cents)"
            f" % 2305843009213693952, 0) FROM {table}"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def run_copy(dsn: str, path: Path, schema: str, batch: int = 30_000) -> float:
    """The single-process script: parse, rename, compute, COPY. Returns its wall time."""
    table = f'"{schema}".bench_orders'
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(DDL.format(t=table))
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            lines = list(fh)
        for start in range(0, len(lines), batch):
            with conn.transaction(), conn.cursor() as cur, cur.copy(f"COPY {table} ({COLUMNS}) FROM STDIN") as cp:
                for line in lines[start : start + batch]:
                    r = orjson.loads(line)
                    ts = datetime.fromisoformat(r["ts"])
                    cp.write_row((r["id"], ts, r["user"], r["amount"], r["country"], amount_cents(r["amount"])))
        return time.perf_counter() - t0


def run_jetl(dsn: str, path: Path, schema: str, loaders: int, work: Path) -> float:
    """The reference job through a jetl stack with `loaders` loader replicas. Returns the run's wall time."""
    from jetl.cli.demo import wait_ready
    from jetl.ops.client import JetlClient
    from jetl.settings import JetlSettings
    from jetl.stack.embedded import Stack

    shutil.rmtree(work, ignore_errors=True)
    (work / "input").mkdir(parents=True)
    os.link(path, work / "input" / "orders.jsonl")
    generate(work / "warm" / "orders.jsonl", 20 * loaders * 1000, seed=7)
    env = {"JETL_LOG_LEVEL": "WARNING", "BENCH_PG_DSN": dsn, "BENCH_PG_SCHEMA": schema}
    stack = Stack(
        data_dir=work, pipelines_dir=BENCH / "pipelines_postgres", extra_env=env, replicas={"loader": loaders}
    )

    async def run() -> float:
        async with JetlClient(JetlSettings(nats=stack.operator)) as jc:
            warm = await jc.request_run("bench_pg_warm")  # every loader replica gets a batch or more of it
            await jc.wait("bench_pg_warm", warm.run_id, timeout=600)
            req = await jc.request_run("bench_pg")
            t0 = time.perf_counter()
            state = await jc.wait("bench_pg", req.run_id, timeout=1800)
            seconds = time.perf_counter() - t0
            if state.status != "completed":
                raise RuntimeError(f"run {state.run_id} ended {state.status}: {state.error}")
            return seconds

    try:
        stack.start()
        asyncio.run(wait_ready(stack))
        return asyncio.run(run())
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


def drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--loaders", default="1,2,4", help="loader replicas to measure, comma-separated")
    parser.add_argument("--data", type=Path, default=BENCH / ".data")
    args = parser.parse_args()
    path = args.data / f"orders_{args.records}.jsonl"
    expected: Expected = generate(path, args.records)
    want = (expected.rows, expected.sum_cents, expected.weighted)
    results: dict[str, Any] = {}

    schema = f"bench_copy_{uuid.uuid4().hex[:8]}"
    try:
        results["copy"] = run_copy(args.dsn, path, schema)
        got = checksums(args.dsn, f'"{schema}".bench_orders')
        assert got == want, f"COPY script: {got} != {want}"
    finally:
        drop(args.dsn, schema)
    print(
        f"psycopg COPY script: {args.records:,} records in {results['copy']:.1f} s"
        f" ({args.records / results['copy']:,.0f} records/s)",
        flush=True,
    )

    for n in (int(x) for x in args.loaders.split(",")):
        schema = f"bench_jetl_{uuid.uuid4().hex[:8]}"
        try:
            seconds = run_jetl(args.dsn, path, schema, n, args.data / "pg-stack")
            got = checksums(args.dsn, f'"{schema}".bench_orders')
            assert got == want, f"jetl with {n} loader(s): {got} != {want}"
        finally:
            drop(args.dsn, schema)
        ratio = results["copy"] / seconds
        goal = " (goal >= 0.9x)" if n == 1 else ""
        print(
            f"jetl, {n} loader replica(s): {seconds:.1f} s ({args.records / seconds:,.0f} records/s),"
            f" {ratio:.2f}x the COPY script{goal}",
            flush=True,
        )


if __name__ == "__main__":
    main()
