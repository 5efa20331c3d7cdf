"""Change data capture end to end, as a user runs it: a pipeline file with PostgresCDCExtractor, the four services
(a Stack over the test's nats-server), ClickHouse (chdb) merging by key with deletes. The first run takes the
table's snapshot; the second carries inserts, updates and deletes, and its extractor is SIGKILLed after JetStream
acknowledged every batch of the run and before the slot's confirm (the pipeline's extractor kills itself there,
once). The run request comes back, the run reads the same changes into the same batches, and the destination ends
equal to the table, once per key; once caught up, the slot retains almost no WAL, and `jetl health` and
`jetl status` show the pipeline's lag behind the slot; `jetl resnapshot` takes a new snapshot.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jetl.events import BatchExtracted, RunExtracted, RunFailed
from jetl.extractors.cdc.pgoutput import lsn_int
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack, Supervisor
from jetl.state import get_cursor
from jetl.testing.cli import jetl
from jetl.testing.servers import NatsHandle, cdc_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = """
import os
import signal
from pydantic import BaseModel
from jetl import ClickHouseLoader, Pipeline, PostgresCDCExtractor

class Item(BaseModel):
    id: int
    note: str | None = None
    n: int | None = None
    deleted: bool = False

class KilledOnce(PostgresCDCExtractor):
    '''SIGKILLs its process in the first confirm after FLAG appears: every batch is acknowledged, the slot not moved.'''

    async def confirm(self, ctx):
        if os.path.exists(FLAG):
            os.remove(FLAG)
            os.kill(os.getpid(), signal.SIGKILL)
        await super().confirm(ctx)

def register_pipelines():
    return [
        Pipeline(name="items", extractors=[KilledOnce(DSN, TABLE, slot=TABLE)], loader=ClickHouseLoader("items"),
                 schema=Item, primary_key=["id"], deletes="deleted", batch_size=40, schema_contract="evolve"),
    ]
"""


def run(settings: JetlSettings, extracted: list[BatchExtracted] | None = None) -> RunState:
    """Run items to its end (its batch.extracted events into `extracted`)."""
    return wait_for(settings, None, extracted)


def wait_for(settings: JetlSettings, run_id: str | None, extracted: list[BatchExtracted] | None = None) -> RunState:
    """The run `run_id` of items (None: one requested here), once it completed; its batch.extracted events into
    `extracted`."""

    def seen(ev: Any, _: Any) -> None:
        if extracted is not None and isinstance(ev, BatchExtracted):
            extracted.append(ev)

    async def go() -> RunState:
        async with JetlClient(settings) as jc:
            rid = run_id if run_id is not None else (await jc.request_run("items")).run_id
            return await jc.wait("items", rid, timeout=180, on_event=seen)

    state = asyncio.run(go())
    assert state.status == "completed", state.error
    return state


@contextmanager
def supervised(stack: Stack) -> Iterator[Supervisor]:
    """Restart the stack's processes when they die (as `jetl up` does), until the block ends."""
    sup = Supervisor(stack)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            sup.poll()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield sup
    finally:
        stop.set()
        t.join()


def source_rows(dsn: str, table: str) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(f"SELECT id, note, n FROM {table}")}


def test_snapshot_then_changes_with_a_kill_between_publish_and_confirm_end_equal_to_the_table(
    tmp_path: Path, nats: NatsHandle, pg_url: str
) -> None:
    with cdc_table(pg_url, "cdc_e2e") as (dsn, table):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {table} SELECT i, 'snap', i FROM generate_series(1, 300) i")
        pipelines, data, flag = tmp_path / "pipelines", tmp_path / "data", tmp_path / "kill-in-confirm"
        pipelines.mkdir()
        text = PIPELINE.replace("DSN", repr(dsn)).replace("TABLE", repr(table)).replace("FLAG", repr(str(flag)))
        (pipelines / "items_pipeline.py").write_text(text)
        cli = functools.partial(jetl, nats_url=nats.url, pipelines_dir=pipelines, data_dir=data)
        settings = JetlSettings(nats=NatsSettings(url=nats.url))
        with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack, supervised(stack) as sup:
            assert run(settings).extracted == 300  # the snapshot

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"INSERT INTO {table} SELECT i, 'new', i FROM generate_series(301, 400) i")
                conn.execute(f"UPDATE {table} SET note = 'upd', n = n * 10 WHERE id % 6 = 0")
                with conn.transaction():
                    conn.execute(f"DELETE FROM {table} WHERE id % 10 = 3")
                    conn.execute(f"UPDATE {table} SET note = 'upd2' WHERE id % 12 = 0")
                conn.execute(f"INSERT INTO {table} VALUES (13, 'back', 13)")  # deleted above, inserted again
            flag.touch()
            changes = run(settings)  # killed in confirm, delivered again, completed by the restarted extractor
            assert not flag.exists() and sup.restarts.get("extractor", 0) >= 1
            assert changes.extracted == 100 + 66 + 40 + 33 + 1

            sql = "SELECT id, note, n FROM items ORDER BY id"
            got = cli("query", "items", sql, "--max-rows", "1000", "--json")
            assert got.code == 0, got
            assert {int(i): (note, n) for i, note, n in got.json()["rows"]} == source_rows(dsn, table)
            count = cli("query", "items", "SELECT count() FROM items", "--json")
            assert count.json()["rows"] == [[len(source_rows(dsn, table))]], count  # one row per key

            # a column added with no default goes through the schema contract: evolve adds it to the destination
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN tag text")
                conn.execute(f"UPDATE {table} SET tag = 'x' || id WHERE id % 50 = 0")
            evolved = run(settings)
            assert evolved.extracted == 8 and evolved.evolved == ["tag text"], evolved.evolved
            tags = cli("query", "items", "SELECT id, tag FROM items WHERE tag IS NOT NULL ORDER BY id", "--json")
            with psycopg.connect(dsn) as conn:
                want = [list(r) for r in conn.execute(f"SELECT id, tag FROM {table} WHERE tag IS NOT NULL ORDER BY id")]
            assert tags.code == 0, tags
            assert tags.json()["rows"] == want and len(want) == 8, tags

            run(settings)  # caught up: the slot moves to this run's marker
            with psycopg.connect(dsn) as conn:
                retained = conn.execute(
                    "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    (table,),
                ).fetchone()
            assert retained is not None and retained[0] < 1024 * 1024
            source = [c for c in cli("health", "--json").json()["checks"] if c["check"] == "source"]
            assert [(c["name"], c["status"]) for c in source] == [("items", "ok")], source
            assert f"slot {table}" in source[0]["detail"] and "behind" in source[0]["detail"]
            assert "source lag:" in cli("status", "items").stdout

            # a new snapshot of the table: `jetl resnapshot` forgets the cursor and requests the run that reads the
            # table again; the slot stays
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"UPDATE {table} SET note = 'before-resnapshot' WHERE id = 1")
            asked = cli("resnapshot", "items", "--reason", "re-snapshot", "--json")
            assert asked.code == 0, asked
            assert asked.json()["table"] == f"public.{table}" and asked.json()["reason"] == "re-snapshot"
            assert wait_for(settings, asked.json()["run_id"]).extracted == len(source_rows(dsn, table))
            again = cli("query", "items", sql, "--max-rows", "1000", "--json").json()["rows"]
            assert {int(i): (note, n) for i, note, n in again} == source_rows(dsn, table)
            stack.check()


def retained_wal(dsn: str, slot: str) -> int:
    """The WAL bytes the slot keeps (written since its confirmed position)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def slot_confirmed(dsn: str, slot: str) -> int:
    """The slot's confirmed position."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        found = row.fetchone()
    assert found is not None
    return lsn_int(found[0])


async def extracted_only(settings: JetlSettings) -> str:
    """Request a run of items and return its id once it is extracted and the pipeline's cursor has moved to it
    (`Pipeline.cursor_at_extraction`): the run may still be loading."""
    async with JetlClient(settings) as jc:
        req = await jc.request_run("items")
        async for ev in jc.follow("items", req.run_id):
            assert not isinstance(ev, RunFailed), ev.error
            if isinstance(ev, RunExtracted):
                break
        kv, deadline = await jc.kv(), time.monotonic() + 120
        while await get_cursor(kv, "items") != ev.cursor:  # the tracker moves it once it folds run.extracted
            assert time.monotonic() < deadline, "the cursor did not move to the extracted run's"
            await asyncio.sleep(0.05)
        return req.run_id


PARTITIONED = """
import asyncio
import os
import signal
from pydantic import BaseModel
from jetl import ClickHouseLoader, Pipeline, PostgresCDCExtractor

class Item(BaseModel):
    id: int
    note: str | None = None
    n: int | None = None
    deleted: bool = False

class Paced(PostgresCDCExtractor):
    # takes its time per chunk of a share, so one replica cannot take them all; the first share that a replica which
    # did not plan the run takes after FLAG appears SIGKILLs it half way (the share is delivered again)

    async def extract_partition(self, ctx, partition):
        n = 0
        async for chunk in super().extract_partition(ctx, partition):
            n += 1
            if n == 2 and ctx.run_id not in self._exports and os.path.exists(FLAG):
                os.remove(FLAG)
                os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(0.05)
            yield chunk

def register_pipelines():
    return [
        Pipeline(name="items", extractors=[Paced(DSN, TABLE, slot=TABLE, chunk_size=100, partition_bytes=96 * 1024)],
                 loader=ClickHouseLoader("items"), schema=Item, primary_key=["id"], deletes="deleted", batch_size=100),
    ]
"""


def test_a_large_table_is_snapshotted_in_shares_by_two_extractors_one_killed_mid_share(
    tmp_path: Path, nats: NatsHandle, pg_url: str
) -> None:
    """The snapshot of a table larger than `partition_bytes` is split into heap-block shares of one exported snapshot;
    two extractor replicas read them, one is SIGKILLed half way through a share (delivered again, read again in the
    same snapshot); the destination equals the table, then the changes since the snapshot land, and the slot, once
    caught up, keeps under 1 MB."""
    with cdc_table(pg_url, "cdc_part") as (dsn, table):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {table} SELECT i, repeat('s', 200), i FROM generate_series(1, 6000) i"
            )  # ~1.4 MB
        pipelines, data, flag = tmp_path / "pipelines", tmp_path / "data", tmp_path / "kill-in-share"
        pipelines.mkdir()
        text = PARTITIONED.replace("DSN", repr(dsn)).replace("TABLE", repr(table)).replace("FLAG", repr(str(flag)))
        (pipelines / "items_pipeline.py").write_text(text)
        cli = functools.partial(jetl, nats_url=nats.url, pipelines_dir=pipelines, data_dir=data)
        settings = JetlSettings(nats=NatsSettings(url=nats.url))
        sql = "SELECT id, note, n FROM items ORDER BY id"
        with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url, replicas={"extractor": 2}) as stack:
            with supervised(stack) as sup:
                flag.touch()
                extracted: list[BatchExtracted] = []
                snapshot = run(settings, extracted)
                assert snapshot.partitions is not None and snapshot.partitions >= 10, snapshot.partitions
                assert snapshot.loaded == 6000 and snapshot.reconciles  # type: ignore[attr-defined]
                assert not flag.exists() and sum(sup.restarts.values()) >= 1, sup.restarts
                assert len({ev.instance for ev in extracted}) >= 2, "one extractor read every share"
                got = cli("query", "items", sql, "--max-rows", "10000", "--json")
                assert {int(i): (note, n) for i, note, n in got.json()["rows"]} == source_rows(dsn, table)

                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"UPDATE {table} SET note = 'upd' WHERE id % 7 = 0")
                    conn.execute(f"DELETE FROM {table} WHERE id % 11 = 0")
                    conn.execute(f"INSERT INTO {table} SELECT i, 'new', i FROM generate_series(6001, 6100) i")
                changes = run(settings)
                assert changes.partitions is None and changes.extracted == 857 + 545 + 100
                got = cli("query", "items", sql, "--max-rows", "10000", "--json")
                assert {int(i): (note, n) for i, note, n in got.json()["rows"]} == source_rows(dsn, table)

            # the loader away: runs go on, each confirmed once its batches are on JETL_RAW: the slot moves past
            # every change made before the run, while nothing loads (the log buffers, not the database)
            stack.procs["loader"].stop()
            waiting = []
            for rnd in range(3):
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"UPDATE {table} SET note = 'away{rnd}' WHERE id % 13 = {rnd}")
                    conn.execute(
                        f"INSERT INTO {table} SELECT i, 'away', i FROM generate_series(%s::int, %s::int) i",
                        (7000 + rnd * 100, 7099 + rnd * 100),
                    )
                    written = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                waiting.append(asyncio.run(extracted_only(settings)))
                assert written is not None and slot_confirmed(dsn, table) >= lsn_int(written[0])
            stack.procs["loader"].start()
            assert all(wait_for(settings, run_id).status == "completed" for run_id in waiting)
            got = cli("query", "items", sql, "--max-rows", "10000", "--json")
            assert {int(i): (note, n) for i, note, n in got.json()["rows"]} == source_rows(dsn, table)

            run(settings)  # caught up
            with psycopg.connect(dsn) as conn:
                temporary = conn.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE temporary AND slot_name LIKE 'jetl_snap_%'"
                ).fetchone()
            assert retained_wal(dsn, table) < 1024 * 1024
            assert temporary == (0,)  # the exported snapshot was closed once every share was read
            stack.check()
