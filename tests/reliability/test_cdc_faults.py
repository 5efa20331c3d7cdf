"""Change data capture under faults (issue 26's "done when"): two tables on a private PostgreSQL 15 (initdb in a
temporary folder, wal_level=logical, so restarting it disturbs no one else), two CDC pipelines into ClickHouse (chdb),
100,000 inserts, 20,000 updates and 5,000 deletes in all; both tables (and one no pipeline chose) are in one
publication, each pipeline reading its own table through its own slot. The changes come in five rounds; in each,
both pipelines run at once and one fault strikes the first pipeline's run at its first batch.extracted: a SIGKILL of
the extractor, the transformer, the loader, the scheduler, then a crash and restart of PostgreSQL (immediate
shutdown: the slot may come back at its last checkpointed position). At the end both destinations equal their
tables, row for row, and each slot, caught up, retains under 1 MB of WAL.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jetl.events import RunCompleted, RunFailed
from jetl.extractors.cdc.pgoutput import lsn_int, lsn_text
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing.cli import jetl
from jetl.testing.servers import NatsHandle

from .conftest import ACK_WAIT, LAB_ENV  # the crash lab's shorter ack wait and shard lease

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path("/usr/lib/postgresql/15/bin")
TABLES = ("a", "b")
ROUNDS = ("extractor", "transformer", "loader", "scheduler", "postgres")
INITIAL = 10_000  # rows per table before the snapshot
INSERTS, UPDATES, DELETES = 8_000, 2_000, 500  # per table and round: 2 * (10k + 5 * 8k) = 100k inserts in all

PIPELINE = """
from pydantic import BaseModel
from jetl import ClickHouseLoader, Pipeline, PostgresCDCExtractor

class Row(BaseModel):
    id: int
    note: str | None = None
    n: int | None = None
    deleted: bool = False

def register_pipelines():
    return [
        Pipeline(name=f"cdc_{t}", extractors=[PostgresCDCExtractor(DSN, t, publication="app", max_changes=12000)],
                 loader=ClickHouseLoader(f"cdc_{t}"), schema=Row, primary_key=["id"], deletes="deleted",
                 batch_size=2000)
        for t in ("a", "b")
    ]
"""


class PrivatePostgres:
    """A PostgreSQL 15 of this test's own: initdb'd in a temporary folder (as the postgres OS user when run as root,
    which initdb refuses), wal_level=logical, on a free port. Without autovacuum: its WAL, written after the last
    run, would count against the slots' lag at the end (a slot cannot confirm what was written after its run)."""

    def __init__(self) -> None:
        if not (BIN / "initdb").exists():
            pytest.skip(f"no PostgreSQL 15 binaries in {BIN}")
        self.root = Path(tempfile.mkdtemp(prefix="jetl-cdc-pg-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(BIN / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off "
            "-c max_replication_slots=8 -c max_wal_senders=8 -c autovacuum=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def crash_and_restart(self) -> None:
        """Stop without a checkpoint (as a crash), then start: recovery replays the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.start()

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        yield pg
    finally:
        pg.stop()


def change(dsn: str, table: str, rnd: int) -> None:
    """One round of inserts, updates and deletes on `table`, in transactions of 500 statements' rows."""
    base = INITIAL + rnd * INSERTS
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(base, base + INSERTS, 500):
            conn.execute(
                f"INSERT INTO {table} SELECT i, 'r{rnd}', i FROM generate_series(%s::bigint, %s::bigint) i",
                (start, start + 499),
            )
        # updates and deletes over ids that exist: spread across everything inserted so far
        stride = (base + INSERTS) // UPDATES
        for k in range(0, UPDATES, 500):
            conn.execute(
                f"UPDATE {table} SET note = 'u{rnd}', n = n + 1 WHERE id IN "
                f"(SELECT i * {stride} + {rnd} FROM generate_series(%s::bigint, %s::bigint) i)",
                (k, k + 499),
            )
        spread = f"SELECT i * {stride * 4} + {rnd + 1} FROM generate_series(0, {DELETES - 1}) i"
        with conn.transaction():  # with a change of a table of the publication that no pipeline reads
            conn.execute(f"DELETE FROM {table} WHERE id IN ({spread})")
            conn.execute("INSERT INTO other VALUES (%s)", (rnd * len(TABLES) + TABLES.index(table),))


def wal_now(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return lsn_int(row[0])


def rows_of(dsn: str, table: str) -> dict[int, list[Any]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: [r[1], r[2]] for r in conn.execute(f"SELECT id, note, n FROM {table}")}


async def run_round(jc: JetlClient, stack: Stack, pg: PrivatePostgres, fault: str | None) -> list[RunState]:
    """Both pipelines' runs at once; `fault` strikes at cdc_a's first batch.extracted. Their final states."""
    reqs = [await jc.request_run(f"cdc_{t}") for t in TABLES]
    struck = fault is None
    async for ev in jc.follow("cdc_a", reqs[0].run_id):
        if not struck and ev.type == "batch.extracted":
            struck = True
            if fault == "postgres":
                await asyncio.to_thread(pg.crash_and_restart)
            else:
                proc = stack.procs[str(fault)]
                proc.stop(kill=True)
                proc.start()
        if isinstance(ev, RunCompleted | RunFailed):
            break
    return [await jc.wait(r.pipeline, r.run_id, timeout=600) for r in reqs]


def test_two_tables_of_changes_under_a_sigkill_of_each_service_and_a_postgres_crash_end_exact(
    tmp_path: Path, nats: NatsHandle, private_pg: PrivatePostgres
) -> None:
    dsn = private_pg.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in TABLES:
            conn.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, note text, n bigint)")
            conn.execute(f"INSERT INTO {t} SELECT i, 'snap', i FROM generate_series(0, {INITIAL - 1}) i")
        conn.execute("CREATE TABLE other (id bigint PRIMARY KEY)")  # published, chosen by no pipeline
        conn.execute(f"CREATE PUBLICATION app FOR TABLE {', '.join(TABLES)}, other")  # the tables of one publication
    pipelines, data = tmp_path / "pipelines", tmp_path / "data"
    pipelines.mkdir()
    (pipelines / "cdc_pipeline.py").write_text(PIPELINE.replace("DSN", repr(dsn)))
    cli = functools.partial(jetl, nats_url=nats.url, pipelines_dir=pipelines, data_dir=data)
    settings = JetlSettings(nats=NatsSettings(url=nats.url, ack_wait=ACK_WAIT))

    async def scenario(stack: Stack) -> tuple[list[list[RunState]], int]:
        rounds = []
        async with JetlClient(settings) as jc:
            snapshots = await run_round(jc, stack, private_pg, None)
            assert [s.extracted for s in snapshots] == [INITIAL, INITIAL]
            for rnd, fault in enumerate(ROUNDS):
                for t in TABLES:
                    await asyncio.to_thread(change, dsn, t, rnd)
                rounds.append(await run_round(jc, stack, private_pg, fault))
            for _ in range(10):  # catch up: runs read at most max_changes each
                before = await asyncio.to_thread(wal_now, dsn)
                last = await run_round(jc, stack, private_pg, None)
                rounds.append(last)
                if all(s.status == "completed" and s.extracted == 0 for s in last):
                    break
        return rounds, before

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url, extra_env=dict(LAB_ENV)) as stack:
        rounds, before_last = asyncio.run(scenario(stack))
        failed = [(s.pipeline, s.run_id, s.error) for r in rounds for s in r if s.status != "completed"]
        # a run may fail (PostgreSQL gone mid-run past its retries); the next run reads on from the slot
        assert all(s.status == "completed" and s.extracted == 0 for s in rounds[-1]), failed
        with psycopg.connect(dsn) as conn:
            retained = conn.execute(
                "SELECT slot_name, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, "
                "(confirmed_flush_lsn - %s::pg_lsn)::bigint FROM pg_replication_slots",
                (lsn_text(before_last),),
            ).fetchall()
        assert sorted(name for name, _, _ in retained) == ["jetl_cdc_a", "jetl_cdc_b"]
        # caught up: each slot confirmed past everything written before the last run, and keeps under 1 MB
        # (read first: reading the tables prunes pages, which writes WAL the slots confirm only in their next run)
        assert all(behind < 1024 * 1024 and past >= 0 for _, behind, past in retained), retained
        for t in TABLES:
            source = rows_of(dsn, t)
            got: dict[int, list[Any]] = {}
            for lo in range(0, max(source) + 1, 10_000):  # `jetl query` returns at most 10,000 rows
                sql = f"SELECT id, note, n FROM cdc_{t} WHERE id >= {lo} AND id < {lo + 10_000} ORDER BY id"
                res = cli("query", f"cdc_{t}", sql, "--max-rows", "10000", "--json")
                assert res.code == 0, res
                out = res.json()
                assert not out["truncated"], out
                page = {int(r[0]): [r[1], int(r[2])] for r in out["rows"]}
                assert len(page) == len(out["rows"])  # one row per key
                got |= page
            assert got == source, f"cdc_{t}: {len(got)} rows, the table {len(source)}"
        stack.check()
