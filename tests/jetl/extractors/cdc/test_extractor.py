"""PostgresCDCExtractor against the machine's PostgreSQL (wal_level=logical: .ci/run sets it), driven as the
extractor service drives it: extract, then `confirm` once every batch is acknowledged, the cursor round-tripped
through JSON as the state store keeps it. Each test has its own table, publication and slot, dropped at the end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jetl.errors import TerminalError
from jetl.extractors.cdc import PostgresCDCExtractor
from jetl.extractors.cdc.pgoutput import lsn_int
from jetl.protocols import VERSION_STRIDE, ExtractContext
from jetl.testing.servers import cdc_table

pytestmark = pytest.mark.integration


@pytest.fixture
def source(pg_url: str) -> Iterator[tuple[str, str]]:
    """(conninfo, table) of a fresh table `items(id int primary key, note text, n int)`."""
    with cdc_table(pg_url, "cdc") as made:
        yield made


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def confirmed(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return lsn_int(row.fetchone()[0])  # type: ignore[index]


class Driver:
    """Runs the extractor the way the extractor service does; `cursor` is what the last completed run left."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn, self.table = dsn, table
        self.cursor: dict[str, Any] | None = None

    def extractor(self) -> PostgresCDCExtractor:
        return PostgresCDCExtractor(self.dsn, self.table, slot=self.table, chunk_size=3)

    def extract(self, run_id: str, ex: PostgresCDCExtractor | None = None) -> tuple[PostgresCDCExtractor, list[Any]]:
        """(the extractor, [(version, record)]) of one run's extraction, not confirmed."""
        ex = ex or self.extractor()
        ctx = ExtractContext("items", run_id, cursor=self.cursor)

        async def go() -> list[Any]:
            out = []
            async for chunk in ex.extract(ctx):
                assert chunk.version is not None
                out += [(chunk.version + i, r) for i, r in enumerate(chunk.records)]
            return out

        return ex, asyncio.run(go())

    def confirm(self, ex: PostgresCDCExtractor, run_id: str) -> None:
        asyncio.run(ex.confirm(ExtractContext("items", run_id, cursor=self.cursor)))

    def run(self, run_id: str) -> list[Any]:
        """A whole run: extract, confirm, the cursor moves (as when the run completes)."""
        ex, out = self.extract(run_id)
        self.confirm(ex, run_id)
        self.cursor = json.loads(json.dumps(ex.next_cursor()))
        return out


def test_snapshot_then_inserts_updates_deletes_in_log_order(source: tuple[str, str]) -> None:
    dsn, table = source
    sql(dsn, f"INSERT INTO {table} SELECT i, 'first', i FROM generate_series(1, 7) i")
    d = Driver(dsn, table)
    snapshot = d.run("r1")
    assert sorted(r["id"] for _, r in snapshot) == list(range(1, 8))
    assert all(r["note"] == "first" and r["deleted"] is False for _, r in snapshot)

    sql(
        dsn,
        f"INSERT INTO {table} VALUES (8, 'new', 8)",
        f"UPDATE {table} SET note = 'second', n = n * 10 WHERE id <= 2",
        f"DELETE FROM {table} WHERE id = 3",
        f"UPDATE {table} SET note = 'third' WHERE id = 1",
    )
    changes = d.run("r2")
    assert [(r["id"], r["note"], r["deleted"]) for _, r in changes] == [
        (8, "new", False),
        (1, "second", False),
        (2, "second", False),
        (3, None, True),  # a delete carries the key (replica identity default)
        (1, "third", False),
    ]
    assert changes[1][1]["n"] == 10  # ints arrive as ints
    versions = [v for v, _ in changes]
    assert versions == sorted(set(versions)) and versions[0] > max(v for v, _ in snapshot)
    with psycopg.connect(dsn) as conn:
        before = lsn_int(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
    assert d.run("r3") == []  # caught up: nothing twice
    assert confirmed(dsn, table) >= before  # and the slot moved to r3's marker, past everything written before it


def test_a_run_killed_between_publish_and_confirm_reads_the_same_changes_again_and_the_slot_waits(
    source: tuple[str, str],
) -> None:
    dsn, table = source
    sql(dsn, f"INSERT INTO {table} SELECT i, 'a', i FROM generate_series(1, 4) i")
    d = Driver(dsn, table)
    d.run("r1")
    sql(dsn, f"UPDATE {table} SET note = 'b' WHERE id < 3", f"DELETE FROM {table} WHERE id = 4")
    before = confirmed(dsn, table)
    _, first = d.extract("r2")  # published, then killed: no confirm
    assert confirmed(dsn, table) == before  # the slot did not move
    sql(dsn, f"INSERT INTO {table} VALUES (9, 'later', 9)")  # committed after r2's first attempt
    ex, again = d.extract("r2")  # the run request, delivered again, to a new process
    assert again == first  # the same changes with the same versions: the same batches, dropped as duplicates
    assert confirmed(dsn, table) == before
    d.confirm(ex, "r2")
    d.cursor = json.loads(json.dumps(ex.next_cursor()))
    assert confirmed(dsn, table) > before
    assert [(r["id"], r["note"]) for _, r in d.run("r3")] == [(9, "later")]  # once, in the next run


def test_a_run_that_died_after_confirming_reads_nothing_again(source: tuple[str, str]) -> None:
    dsn, table = source
    d = Driver(dsn, table)
    d.run("r1")
    sql(dsn, f"INSERT INTO {table} VALUES (1, 'x', 1)")
    ex, out = d.extract("r2")
    assert len(out) == 1
    d.confirm(ex, "r2")  # confirmed, then killed before the run completed: the cursor did not move
    assert d.extract("r2")[1] == []  # its batches are on JETL_RAW already
    assert d.run("r3") == []


def test_a_column_added_without_a_default_goes_on_and_other_column_changes_and_truncate_stop(
    source: tuple[str, str],
) -> None:
    dsn, table = source
    d = Driver(dsn, table)
    d.run("r1")
    sql(dsn, f"ALTER TABLE {table} ADD COLUMN extra text", f"INSERT INTO {table} VALUES (1, 'x', 1, 'e')")
    # the new field reaches the pipeline, whose schema contract decides (evolve adds the column)
    assert [(r["id"], r["extra"]) for _, r in d.run("r2")] == [(1, "e")]
    assert d.cursor is not None and d.cursor["columns"][-1][0] == "extra"  # the next runs expect the new shape
    sql(dsn, f"INSERT INTO {table} VALUES (2, 'y', 2, 'f')")
    assert [r["extra"] for _, r in d.run("r3")] == ["f"]

    sql(dsn, f"ALTER TABLE {table} ADD COLUMN flag int DEFAULT 7", f"INSERT INTO {table} VALUES (3, 'z', 3, 'g', 1)")
    with pytest.raises(TerminalError, match=r"flag were added with a DEFAULT.*jetl resnapshot items"):
        d.extract("r4")  # rows 1 and 2 hold flag = 7, which no change carried
    d.cursor = None  # jetl resnapshot
    assert sorted((r["id"], r["flag"]) for _, r in d.run("r5")) == [(1, 7), (2, 7), (3, 1)]
    d.run("r6")

    sql(dsn, f"ALTER TABLE {table} ALTER COLUMN n TYPE bigint", f"INSERT INTO {table} VALUES (4, 'w', 4, 'h', 2)")
    with pytest.raises(TerminalError, match=r"columns of .* changed \(was .*jetl resnapshot items"):
        d.extract("r7")  # retyped: the table was rewritten, unseen by the slot
    d.cursor = None
    d.run("r8")
    sql(dsn, f"TRUNCATE {table}")
    with pytest.raises(TerminalError, match="TRUNCATE"):
        d.extract("r9")


def test_versions_follow_commit_order_across_interleaved_transactions(source: tuple[str, str]) -> None:
    dsn, table = source
    d = Driver(dsn, table)
    d.run("r1")
    with psycopg.connect(dsn) as t1, psycopg.connect(dsn) as t2:
        t1.execute(f"INSERT INTO {table} VALUES (1, 't1', 1)")  # written first, committed last
        t2.execute(f"INSERT INTO {table} VALUES (2, 't2', 2)")
        t2.commit()
        t1.execute(f"UPDATE {table} SET note = 't1b' WHERE id = 1")
        t1.commit()
    out = d.run("r2")
    assert [r["note"] for _, r in out] == ["t2", "t1", "t1b"]
    assert [v for v, _ in out] == sorted(v for v, _ in out)
    assert out[1][0] // VERSION_STRIDE == out[2][0] // VERSION_STRIDE  # one transaction: one commit position


def test_lag_counts_the_bytes_and_the_age_of_what_waits_in_the_slot(source: tuple[str, str]) -> None:
    dsn, table = source
    d = Driver(dsn, table)
    d.run("r1")
    sql(dsn, f"INSERT INTO {table} VALUES (1, 'x', 1)")
    waiting = asyncio.run(d.extractor().lag("items"))
    assert waiting.bytes > 0 and waiting.seconds is not None and waiting.seconds >= 0
    assert f"slot {table}" in waiting.detail
    d.run("r2")
    assert asyncio.run(d.extractor().lag("items")).seconds == 0.0  # nothing waits


def test_a_slot_taken_back_by_crash_recovery_reads_nothing_twice(source: tuple[str, str]) -> None:
    """After a crash PostgreSQL may bring a slot back to its last checkpointed position; transactions before the
    position the cursor holds are skipped, so a run reads what it would have read anyway. The slot "as it was" is a
    copy taken earlier (pg_copy_logical_replication_slot)."""
    dsn, table = source
    d = Driver(dsn, table)
    d.run("r1")
    back = f"{table}_back"
    sql(dsn, f"SELECT pg_copy_logical_replication_slot('{table}', '{back}')")
    try:
        sql(dsn, f"INSERT INTO {table} VALUES (1, 'x', 1)")
        assert [r["id"] for _, r in d.run("r2")] == [1]
        sql(dsn, f"INSERT INTO {table} VALUES (2, 'y', 2)")
        taken_back = PostgresCDCExtractor(dsn, table, slot=back, publication=table)
        _, out = d.extract("r3", taken_back)
        assert [r["id"] for _, r in out] == [2]  # not 1 again
    finally:
        sql(dsn, f"SELECT pg_drop_replication_slot('{back}')")


def test_an_interrupted_snapshot_is_taken_again_by_the_next_run_and_deletes_since_reach_the_destination(
    source: tuple[str, str],
) -> None:
    dsn, table = source
    sql(dsn, f"INSERT INTO {table} SELECT i, 'a', i FROM generate_series(1, 7) i")
    d = Driver(dsn, table)

    async def first_chunk_then_killed() -> list[Any]:
        chunks = d.extractor().extract(ExtractContext("items", "r1", cursor=None))
        chunk = await anext(chunks)  # published, then the extractor dies
        await chunks.aclose()
        return chunk.records

    published = asyncio.run(first_chunk_then_killed())
    gone = published[0]["id"]
    sql(dsn, f"DELETE FROM {table} WHERE id = {gone}")  # a row that attempt published, deleted since
    with pytest.raises(TerminalError, match="began a snapshot"):
        d.extract("r1")  # the same run again: its batch ids hold the first attempt's rows
    snapshot = d.run("r2")  # the next run takes a new snapshot
    assert sorted(r["id"] for _, r in snapshot) == [i for i in range(1, 8) if i != gone]
    changes = d.run("r3")
    assert [(r["id"], r["deleted"]) for _, r in changes] == [(gone, True)]  # the earlier attempt's row goes


def test_a_cdc_pipeline_that_would_not_merge_by_key_with_its_deletes_fails_at_start_up() -> None:
    from pydantic import BaseModel

    from jetl import FileLoader, Pipeline
    from jetl.errors import ConfigError

    class Row(BaseModel):
        id: int
        deleted: bool = False

    def pipeline(**kw: Any) -> Pipeline:
        kw.setdefault("extractors", [PostgresCDCExtractor("postgresql://u@h/db", "items")])
        return Pipeline(name="items", loader=FileLoader("/tmp/never"), schema=Row, **kw)

    with pytest.raises(ConfigError, match="primary_key and the merge"):
        pipeline()
    with pytest.raises(ConfigError, match="deletes='deleted'"):
        pipeline(primary_key=["id"])
    assert pipeline(primary_key=["id"], deletes="deleted").write_spec.disposition == "merge"
    two = [PostgresCDCExtractor("postgresql://u@h/db", "items"), PostgresCDCExtractor("postgresql://u@h/db", "more")]
    with pytest.raises(ConfigError, match="must be the pipeline's only extractor: one pipeline per table"):
        pipeline(primary_key=["id"], deletes="deleted", extractors=two)


def share_records(ex: PostgresCDCExtractor, run_id: str, spec: dict[str, Any]) -> list[Any]:
    """[(version, record)] of one share, its spec round-tripped through JSON as the bus carries it."""
    from jetl.protocols import Partition

    async def go() -> list[Any]:
        out = []
        async for chunk in ex.extract_partition(
            ExtractContext("items", run_id), Partition(json.loads(json.dumps(spec)))
        ):
            assert chunk.version is not None
            out += [(chunk.version + i, r) for i, r in enumerate(chunk.records)]
        return out

    return asyncio.run(go())


def test_a_large_snapshot_is_read_in_shares_of_one_snapshot_by_any_replica(source: tuple[str, str]) -> None:
    """A table larger than `partition_bytes`: the planning replica exports one snapshot and splits the heap into
    block ranges; other replicas import it, each share once or again (a redelivery reads the same rows, same
    versions). Rows written after the plan are in no share; the change run after it reads exactly them."""
    dsn, table = source
    sql(dsn, f"INSERT INTO {table} SELECT i, repeat('x', 200), i FROM generate_series(1, 3000) i")  # ~90 blocks
    planner = PostgresCDCExtractor(dsn, table, slot=table, chunk_size=100, partition_bytes=128 * 1024)
    parts = planner.partitions(ExtractContext("items", "r1"))
    assert parts is not None and 4 <= len(parts) <= 8, parts
    at = lsn_int(parts[0].spec["at"])
    assert planner.next_cursor() is not None and planner.next_cursor()["snapshot"] == parts[0].spec["at"]  # type: ignore[index]
    sql(  # after the snapshot: in no share
        dsn,
        f"UPDATE {table} SET note = 'later' WHERE id <= 10",
        f"DELETE FROM {table} WHERE id BETWEEN 11 AND 20",
        f"INSERT INTO {table} SELECT i, 'new', i FROM generate_series(5001, 5010) i",
    )
    replica = PostgresCDCExtractor(dsn, table, slot=table, chunk_size=100)  # another process
    read = [share_records(replica, "r1", p.spec) for p in reversed(parts)]
    assert share_records(replica, "r1", parts[-1].spec) == read[0]  # delivered again: the same rows and versions
    rows = [x for share in read for x in share]
    assert sorted(r["id"] for _, r in rows) == list(range(1, 3001))
    assert all(r["note"] == "x" * 200 and r["deleted"] is False for _, r in rows)
    versions = [v for v, _ in rows]
    assert len(set(versions)) == len(versions) and max(versions) < at * VERSION_STRIDE

    assert confirmed(dsn, table) < at  # the slot waits for the run's confirm
    asyncio.run(planner.confirm(ExtractContext("items", "r1")))
    assert confirmed(dsn, table) >= at
    with pytest.raises(TerminalError, match="is gone"):  # confirmed: the exported snapshot is closed
        share_records(replica, "r1", parts[0].spec)

    d = Driver(dsn, table)
    d.cursor = json.loads(json.dumps(planner.next_cursor()))
    changes = [(r["id"], r["note"], r["deleted"]) for _, r in d.run("r2")]
    assert changes == [(i, "later", False) for i in range(1, 11)] + [(i, None, True) for i in range(11, 21)] + [
        (i, "new", False) for i in range(5001, 5011)
    ]
    assert min(v for v, _ in d.run("r3") or [(at * VERSION_STRIDE, None)]) >= at * VERSION_STRIDE


def test_a_failed_partitioned_snapshot_is_released_and_the_slot_stays(source: tuple[str, str]) -> None:
    dsn, table = source
    sql(dsn, f"INSERT INTO {table} SELECT i, repeat('x', 200), i FROM generate_series(1, 1000) i")
    planner = PostgresCDCExtractor(dsn, table, slot=table, partition_bytes=64 * 1024)
    parts = planner.partitions(ExtractContext("items", "r1"))
    assert parts is not None and len(parts) >= 2
    before = confirmed(dsn, table)
    asyncio.run(planner.release(ExtractContext("items", "r1")))
    assert confirmed(dsn, table) == before
    with pytest.raises(TerminalError, match="exported it for run r1 stopped"):
        share_records(PostgresCDCExtractor(dsn, table, slot=table), "r1", parts[1].spec)
    # a share spec is checked before it reaches SQL: it comes off the bus
    forged = dict(parts[1].spec, snapshot="x'; DROP TABLE items; --")
    with pytest.raises(ValueError, match="snapshot"):
        share_records(PostgresCDCExtractor(dsn, table, slot=table), "r1", forged)
    # the next run takes a new snapshot, whole or in shares
    again = PostgresCDCExtractor(dsn, table, slot=table, partition_bytes=64 * 1024)
    assert again.partitions(ExtractContext("items", "r2")) is not None
    asyncio.run(again.release(ExtractContext("items", "r2")))
    assert again.partitions(ExtractContext("items", "r3", cursor={"snapshot": "0/1"})) is None  # change runs: whole


def merged(*runs: list[Any]) -> dict[int, tuple[Any, ...]]:
    """What a versioned merge by `id` makes of runs' records (deletes delete): the highest version of each key."""
    best: dict[int, tuple[int, Any]] = {}
    for out in runs:
        for version, r in out:
            if r["id"] not in best or version > best[r["id"]][0]:
                best[r["id"]] = (version, r)
    return {k: (r["note"], r["n"]) for k, (_, r) in best.items() if not r["deleted"]}


def table_rows(dsn: str, table: str) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(f"SELECT id, note, n FROM {table}")}


def test_a_resnapshot_keeps_the_changes_the_slot_held_so_deletes_and_updates_since_the_last_run_land(
    source: tuple[str, str],
) -> None:
    """A re-snapshot right after a run (few bytes of WAL between): the rows the destination holds from earlier runs
    may carry versions above the new snapshot's band, and rows deleted since the last run are in no snapshot. The
    slot keeps what it held, and the next run reads it again: the destination ends equal to the table."""
    dsn, table = source
    sql(dsn, f"INSERT INTO {table} SELECT i, 'a', i FROM generate_series(1, 20) i")
    d = Driver(dsn, table)
    runs = [d.run("r1")]
    sql(dsn, f"UPDATE {table} SET note = 'b' WHERE id <= 5")
    runs.append(d.run("r2"))
    sql(dsn, f"UPDATE {table} SET note = 'c' WHERE id <= 3", f"DELETE FROM {table} WHERE id IN (4, 6)")
    d.cursor = None  # jetl resnapshot
    runs.append(d.run("r3"))
    assert sorted(r["id"] for _, r in runs[-1]) == [i for i in range(1, 21) if i not in (4, 6)]
    sql(dsn, f"UPDATE {table} SET note = 'd' WHERE id = 1")
    runs.append(d.run("r4"))
    assert merged(*runs) == table_rows(dsn, table)


def test_a_resnapshot_after_a_truncate_or_a_column_change_does_not_stop_on_it_again(source: tuple[str, str]) -> None:
    dsn, table = source
    sql(dsn, f"INSERT INTO {table} SELECT i, 'a', i FROM generate_series(1, 5) i")
    d = Driver(dsn, table)
    runs = [d.run("r1")]
    sql(dsn, f"UPDATE {table} SET note = 'b' WHERE id = 1", f"ALTER TABLE {table} ADD COLUMN extra int DEFAULT 0")
    sql(dsn, f"UPDATE {table} SET note = 'c', extra = 1 WHERE id = 2")
    with pytest.raises(TerminalError, match="columns of"):
        d.extract("r2")
    d.cursor = None  # the schema updated, a new snapshot taken
    runs.append(d.run("r3"))
    runs.append(d.run("r4"))  # reads what the slot kept before the snapshot again, without stopping
    assert merged(*runs) == table_rows(dsn, table)
    sql(dsn, f"TRUNCATE {table}", f"INSERT INTO {table} (id, note, n) VALUES (7, 'x', 7)")
    with pytest.raises(TerminalError, match="TRUNCATE"):
        d.extract("r5")
    d.cursor = None
    fresh = d.run("r6")  # (the destination emptied by hand, as the message says)
    assert [r["id"] for _, r in fresh] == [7]
    assert merged(fresh, d.run("r7")) == table_rows(dsn, table)
