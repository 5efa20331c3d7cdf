"""`PostgresCDCExtractor`: one table's rows, then every insert, update and delete of it, from a logical replication
slot, in rolling runs (docs/cdc.md).

A run is what the schedule (or `jetl run`) asks for; each reads the slot up to a bound and stops:

- the first run takes a consistent snapshot of the table (a temporary slot's exported snapshot), versioned below the
  snapshot's log position, and lets the pipeline's slot forget what the snapshot already holds; a table larger than
  `partition_bytes` is read in shares of heap blocks by any extractor replica, each importing that one snapshot
  while the replica that exported it holds it open (`partitions`, `extract_partition`);
- every later run writes a marker into the log (`pg_logical_emit_message`), reads the slot's changes up to the first
  marker of its own run id (at most `max_changes`, whole transactions) and stops there. A run delivered again after
  a kill finds the marker its first attempt wrote, so it reads exactly the same changes into the same batches (same
  ids: JetStream drops the copies);
- the slot's confirmed position moves only in `confirm`, which the extractor service calls once JetStream has
  acknowledged every batch of the run. A slot found ahead of the pipeline's cursor means an earlier attempt
  confirmed and then died: its batches are on JETL_RAW, and this run reads nothing.

Each change's version is its transaction's commit position times `VERSION_STRIDE` plus its place in the
transaction: the log position orders the merge, whatever order batches arrive in.

Errors at this edge (`jetl.errors`): psycopg's OperationalError -> TransientError (the server restarts, the network);
any other psycopg error, TRUNCATE of the table, a changed column list, a dropped slot, wal_level not logical ->
TerminalError or ConfigError, naming the table and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from jetl.errors import ConfigError, TerminalError, TransientError
from jetl.extractors.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Change,
    Commit,
    Decoded,
    Message,
    Relation,
    Truncate,
    decode_value,
    lsn_int,
    lsn_text,
    parse,
)
from jetl.protocols import VERSION_STRIDE, Check, Chunk, ExtractContext, Partition, Record, SourceLag, WriteSpec
from jetl.redact import redact_text

if TYPE_CHECKING:
    import psycopg

    from jetl.settings import JetlSettings

MARKER_PREFIX = "jetl"
"""The prefix of the log messages that bound runs."""
SNAPSHOT_SPAN = 1 << 40
"""Versions a snapshot's rows take, just below its log position's (up to 2**40 rows)."""
ROWS_PER_BLOCK = 1 << 11
"""Versions a heap block's rows take in a snapshot (a block holds at most 1,163 rows, at 32 kB pages)."""
MAX_PARTITIONS = 256
"""Shares a snapshot is split into at most."""
MAX_LSN = (1 << 63) // VERSION_STRIDE
"""The log positions versions can order: 2**39 bytes of WAL since the cluster's initdb (512 GiB)."""
MARKER_FLUSH_S = 30.0
"""How long a run waits for its marker to reach disk (the WAL writer flushes every wal_writer_delay, 200 ms)."""
POSTGRES_EPOCH = 946_684_800
"""2000-01-01 UTC as a Unix time: where PostgreSQL's timestamps count from."""
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


class _Share(BaseModel):
    """One share of a partitioned snapshot (`Partition.spec`): the snapshot to import, its position, the columns the
    plan saw and the heap blocks to read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    snapshot: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{8}-[0-9A-F]{8}-[0-9]{1,10}$")]
    at: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")]
    columns: list[tuple[str, int]]
    first: Annotated[int, Field(ge=0, lt=1 << 32)]
    last: Annotated[int, Field(gt=0, le=1 << 32)] | None


@dataclass
class _Run:
    """What one run read: the position `confirm` moves the slot to, and the cursor it reaches."""

    target: int | None
    cursor: dict[str, Any]


@dataclass
class PostgresCDCExtractor:
    """One PostgreSQL table, snapshot then changes, through a logical replication slot (pgoutput): `jetl[cdc]`.

    `Pipeline(extractors=[PostgresCDCExtractor(dsn, "public.items")], primary_key=["id"], deletes="deleted", ...)`
    with a schema that has `deleted: bool = False` and defaults for the non-key columns (a delete carries only the
    key, unless the table's REPLICA IDENTITY is FULL).
    """

    dsn: str
    """libpq connection string or URL (`postgresql://` or SQLAlchemy's `postgresql+psycopg://`) of a user with the
    REPLICATION attribute who may read the table (and create its publication, unless it exists)."""
    table: str
    """`schema.table` or `table` (schema public)."""
    publication: str | None = None
    """The publication to read (created for the table when missing); default: the slot's name."""
    slot: str | None = None
    """The replication slot; default `jetl_<pipeline>`. One slot per pipeline: its confirmed position is its own."""
    delete_field: str = "deleted"
    """The field set True on a delete record and False on the others: the pipeline's `deletes`."""
    max_changes: int = 1_000_000
    """Changes one run reads at most (whole transactions); the rest waits for the next run."""
    chunk_size: int = 5_000
    partition_bytes: int = 256 << 20
    """A snapshot of a table larger than this (its heap, `pg_relation_size`) is read in shares of about this size,
    one per extractor replica that is free (`partitions`); changes are read by one replica, in log order."""
    _runs: dict[str, _Run] = field(default_factory=dict, repr=False)
    _exports: dict[str, psycopg.Connection[Any]] = field(default_factory=dict, repr=False)
    """The exporting connection of each partitioned snapshot this process planned, by run: its snapshot can be
    imported while it is open (until `confirm` or `release`)."""
    _cursor: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        schema, _, name = self.table.rpartition(".")
        self.schema_name, self.table_name = schema or "public", name
        for ident in (self.schema_name, self.table_name, self.publication, self.slot):
            if ident is not None and not _IDENT.match(ident):
                raise ConfigError(f"PostgresCDCExtractor: {ident!r} is not a plain PostgreSQL identifier")
        if self.slot is not None and not re.fullmatch(r"[a-z0-9_]+", self.slot):
            raise ConfigError(f"PostgresCDCExtractor: slot {self.slot!r}: lower-case letters, digits and _ only")
        if self.max_changes < 1 or self.chunk_size < 1 or self.partition_bytes < 1:
            raise ConfigError("PostgresCDCExtractor: max_changes, chunk_size and partition_bytes are at least 1")
        self.conninfo = re.sub(r"^postgresql\+psycopg2?://", "postgresql://", self.dsn)

    # -- the Extractor contract -------------------------------------------------------------------

    @property
    def keeps_cursor(self) -> bool:
        """Always: the cursor records the snapshot and the slot position the last completed run reached."""
        return True

    def next_cursor(self) -> dict[str, Any] | None:
        """The cursor the last run reached."""
        return self._cursor

    def check(self, settings: JetlSettings) -> Check:
        """ok once constructed; it connects only when a run starts."""
        return Check("ok", f"{self.schema_name}.{self.table_name} (logical replication, pgoutput)")

    def check_write(self, spec: WriteSpec) -> None:
        """Changes load only by key, newest version winning, deletes deleting: merge, with its delete field."""
        if spec.disposition != "merge" or not spec.key:
            raise ConfigError(
                f"PostgresCDCExtractor({self.table!r}) needs a primary_key and the merge disposition: a run read again "
                f"after a crash would load its changes twice under {spec.disposition!r}"
            )
        if spec.deletes is None or spec.deletes.field != self.delete_field or spec.deletes.value is not True:
            raise ConfigError(
                f"PostgresCDCExtractor({self.table!r}) marks deletes with {self.delete_field!r}: give the pipeline "
                f"deletes={self.delete_field!r} (and its schema `{self.delete_field}: bool = False`)"
            )

    def slot_for(self, pipeline: str) -> str:
        """The slot a pipeline's runs read."""
        return self.slot or "jetl_" + re.sub(r"[^a-z0-9_]", "_", pipeline.lower())[:58]

    def publication_for(self, pipeline: str) -> str:
        """The publication a pipeline's slot decodes."""
        return self.publication or self.slot_for(pipeline)

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """The table's snapshot (first run), or its changes up to this run's marker."""
        import psycopg

        slot = self.slot_for(ctx.pipeline)
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                confirmed = await self._prepare(conn, ctx)
                if not (ctx.cursor or {}).get("snapshot"):
                    async for chunk in self._snapshot(conn, ctx, confirmed):
                        yield chunk
                elif confirmed > lsn_int(ctx.cursor["confirmed"]):  # type: ignore[index]
                    # an earlier attempt confirmed past the cursor, then died: its batches are on JETL_RAW
                    self._done(ctx, None, dict(ctx.cursor or {}, confirmed=lsn_text(confirmed)))
                else:
                    async for chunk in self._changes(conn, ctx):
                        yield chunk
        except psycopg.OperationalError as exc:
            raise TransientError(self._where(slot, exc)) from exc
        except psycopg.Error as exc:
            raise TerminalError(self._where(slot, exc)) from exc

    def partitions(self, ctx: ExtractContext) -> list[Partition] | None:
        """A snapshot run of a table larger than `partition_bytes`: its heap's blocks in shares of about that size,
        all read in one snapshot, which this process exports and keeps importable until the run's `confirm` (or
        `release`). None for any other run: it is read whole, by `extract`.

        The snapshot is exported here, the pipeline's slot made first, as `extract` does; the cursor the run
        reaches (`next_cursor`) is known at once: the snapshot's position. Blocking: the extractor service calls it
        in a worker thread."""
        if (ctx.cursor or {}).get("snapshot"):
            return None
        return asyncio.run(self._plan(ctx))

    async def extract_partition(self, ctx: ExtractContext, partition: Partition) -> AsyncIterator[Chunk]:
        """The rows of one share of a partitioned snapshot, read in the snapshot the planning replica exported."""
        import psycopg

        share = _Share.model_validate(partition.spec)  # from the bus: checked before it reaches SQL
        slot = self.slot_for(ctx.pipeline)
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as data:
                try:
                    columns = await self._import(data, share.snapshot)
                except psycopg.errors.InvalidParameterValue as exc:  # "invalid snapshot identifier"
                    raise TerminalError(
                        f"the snapshot {share.snapshot} of {self.schema_name}.{self.table_name} is gone (the "
                        f"extractor that exported it for run {ctx.run_id} stopped before this share began): the run "
                        "fails, and the next run takes a new snapshot"
                    ) from exc
                if [tuple(c) for c in columns] != share.columns:
                    raise TerminalError(f"the columns of {self.schema_name}.{self.table_name} differ from the plan's")
                async for chunk in self._rows(data, columns, lsn_int(share.at), share.first, share.last):
                    yield chunk
        except psycopg.OperationalError as exc:
            raise TransientError(self._where(slot, exc)) from exc
        except psycopg.Error as exc:
            raise TerminalError(self._where(slot, exc)) from exc

    async def release(self, ctx: ExtractContext) -> None:
        """Forget the run `ctx` without moving the slot (its run failed): close the snapshot it exported."""
        self._runs.pop(ctx.run_id, None)
        exporter = self._exports.pop(ctx.run_id, None)
        if exporter is not None:
            await asyncio.to_thread(exporter.close)  # drops the temporary slot

    async def confirm(self, ctx: ExtractContext) -> None:
        """Move the slot to where the run `ctx` read (every batch of it is on JETL_RAW)."""
        import psycopg

        exporter = self._exports.pop(ctx.run_id, None)
        if exporter is not None:  # a partitioned snapshot: every share is read, its snapshot is no longer needed
            await asyncio.to_thread(exporter.close)
        run = self._runs.pop(ctx.run_id, None)
        if run is None:
            return
        self._cursor = run.cursor
        if run.target is None:
            return
        slot = self.slot_for(ctx.pipeline)
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                confirmed = await self._confirmed(conn, slot)
                if confirmed is not None and run.target > confirmed:
                    advance = "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)"
                    await conn.execute(advance, (slot, lsn_text(run.target)))
        except psycopg.OperationalError as exc:
            raise TransientError(self._where(slot, exc)) from exc
        except psycopg.Error as exc:
            raise TerminalError(self._where(slot, exc)) from exc

    async def lag(self, pipeline: str) -> SourceLag:
        """WAL the slot keeps (bytes since its confirmed position) and the age of the oldest transaction in it."""
        import psycopg

        slot = self.slot_for(pipeline)
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, confirmed_flush_lsn::text, active "
                    "FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,),
                )
                row = await cur.fetchone()
                if row is None:
                    raise ConfigError(f"no replication slot {slot} (the pipeline's first run creates it)")
                behind, at, active = int(row[0]), row[1], bool(row[2])
                detail = f"slot {slot} at {at}"
                if active:  # a run is reading it: only the bytes can be told without waiting for it
                    return SourceLag(behind, None, detail + ", a run is reading it")
                cur = await conn.execute(
                    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, 1, 'proto_version', '1', "
                    "'publication_names', %s)",
                    (slot, self.publication_for(pipeline)),
                )
                for (data,) in await cur.fetchall():
                    msg = parse(bytes(data))
                    if isinstance(msg, Begin):  # commit_time: microseconds since 2000-01-01 UTC
                        age = time.time() - (POSTGRES_EPOCH + msg.commit_time / 1e6)
                        return SourceLag(behind, max(0.0, age), detail)
                return SourceLag(behind, 0.0, detail)
        except psycopg.Error as exc:
            raise TransientError(self._where(slot, exc)) from exc

    # -- a run ------------------------------------------------------------------------------------

    def _where(self, slot: str, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return redact_text(f"PostgreSQL CDC of {self.schema_name}.{self.table_name} (slot {slot}): {first}", None)

    def _done(self, ctx: ExtractContext, target: int | None, cursor: dict[str, Any]) -> None:
        self._runs[ctx.run_id] = _Run(target, cursor)
        self._cursor = cursor

    async def _confirmed(self, conn: psycopg.AsyncConnection[Any], slot: str) -> int | None:
        query = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
        cur = await conn.execute(query, (slot,))
        row = await cur.fetchone()
        return None if row is None or row[0] is None else lsn_int(row[0])

    async def _columns(self, conn: psycopg.AsyncConnection[Any]) -> list[list[Any]]:
        cur = await conn.execute(
            "SELECT a.attname, a.atttypid::int FROM pg_attribute a WHERE a.attrelid = %s::regclass "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (f'"{self.schema_name}"."{self.table_name}"',),
        )
        return [[name, oid] for name, oid in await cur.fetchall()]

    async def _prepare(self, conn: psycopg.AsyncConnection[Any], ctx: ExtractContext) -> int:
        """Check the server, make the publication and the slot when missing; the slot's confirmed position."""
        slot, publication = self.slot_for(ctx.pipeline), self.publication_for(ctx.pipeline)
        level = await (await conn.execute("SHOW wal_level")).fetchone()
        if level is None or level[0] != "logical":
            raise ConfigError(
                f"PostgreSQL runs with wal_level={level[0] if level else '?'}: CDC needs logical "
                "(ALTER SYSTEM SET wal_level = logical, then restart the server)"
            )
        cur = await conn.execute("SELECT to_regclass(%s)", (f'"{self.schema_name}"."{self.table_name}"',))
        found = await cur.fetchone()
        if found is None or found[0] is None:
            raise ConfigError(f"PostgresCDCExtractor: no table {self.schema_name}.{self.table_name}")
        if any(name == self.delete_field for name, _ in await self._columns(conn)):
            raise ConfigError(
                f"table {self.schema_name}.{self.table_name} has a column {self.delete_field!r}, the extractor's "
                "delete_field: choose another name for it"
            )
        cur = await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        if await cur.fetchone() is None:
            await conn.execute(f'CREATE PUBLICATION "{publication}" FOR TABLE "{self.schema_name}"."{self.table_name}"')
        cur = await conn.execute(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s AND tablename = %s",
            (publication, self.schema_name, self.table_name),
        )
        if await cur.fetchone() is None:
            raise ConfigError(f"publication {publication} does not publish {self.schema_name}.{self.table_name}")
        confirmed = await self._confirmed(conn, slot)
        if confirmed is None:
            if (ctx.cursor or {}).get("snapshot"):
                raise TerminalError(
                    f"replication slot {slot} is gone (dropped by hand, or by max_slot_wal_keep_size): the changes "
                    "since the last run are lost to it. Take a new snapshot: jetl resnapshot " + ctx.pipeline
                )
            await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            confirmed = await self._confirmed(conn, slot)
            assert confirmed is not None
        return confirmed

    async def _mark(self, conn: psycopg.AsyncConnection[Any], content: str) -> int:
        """Write a marker into the log; where it ends, once flushed.

        Logical decoding reads only flushed WAL (the peek stops at the flush position it finds when it starts), and
        a marker outside a transaction is flushed by the WAL writer a moment later (wal_writer_delay): a run that
        read before then would stop short of its marker, somewhere its next attempt would not."""
        cur = await conn.execute("SELECT pg_logical_emit_message(false, %s, %s)::text", (MARKER_PREFIX, content))
        row = await cur.fetchone()
        assert row is not None
        end = lsn_int(row[0])
        deadline = time.monotonic() + MARKER_FLUSH_S
        while True:
            cur = await conn.execute("SELECT pg_current_wal_flush_lsn()::text")
            flushed = await cur.fetchone()
            if flushed is not None and lsn_int(flushed[0]) >= end:
                return end
            if time.monotonic() > deadline:
                raise TransientError(f"the marker at {lsn_text(end)} was not flushed within {MARKER_FLUSH_S:.0f}s")
            await asyncio.sleep(0.02)

    async def _peek(
        self, conn: psycopg.AsyncConnection[Any], ctx: ExtractContext, upto: int, changes: int | None
    ) -> AsyncGenerator[Decoded, None]:
        """The slot's messages from its confirmed position up to `upto` (at most `changes` rows, whole
        transactions), without consuming them: the slot moves only in `confirm`."""
        async with conn.transaction():
            cur = conn.cursor(name=f"jetl_cdc_{ctx.run_id}"[:60].replace("-", "_"))
            await cur.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, 'proto_version', '1', "
                "'publication_names', %s, 'messages', 'true')",
                (self.slot_for(ctx.pipeline), lsn_text(upto), changes, self.publication_for(ctx.pipeline)),
            )
            while rows := await cur.fetchmany(self.chunk_size):
                for (data,) in rows:
                    yield parse(bytes(data))
            await cur.close()

    async def _snapshot(
        self, conn: psycopg.AsyncConnection[Any], ctx: ExtractContext, confirmed: int
    ) -> AsyncIterator[Chunk]:
        """Every row of the table as of one exported snapshot, versioned just below that snapshot's position."""
        import psycopg

        keep_stream = await self._begin_snapshot(conn, ctx)
        exporter, at, name = await self._export(ctx)
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as data:
                columns = await self._import(data, name)
                async for chunk in self._rows(data, columns, at, 0, None):
                    yield chunk
        finally:
            await asyncio.to_thread(exporter.close)  # drops the temporary slot
        self._snapshot_taken(ctx, at, confirmed, columns, keep_stream)

    async def _plan(self, ctx: ExtractContext) -> list[Partition] | None:
        import psycopg

        slot = self.slot_for(ctx.pipeline)
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                confirmed = await self._prepare(conn, ctx)
                cur = await conn.execute(
                    "SELECT pg_relation_size(%s::regclass), current_setting('block_size')::int",
                    (f'"{self.schema_name}"."{self.table_name}"',),
                )
                row = await cur.fetchone()
                assert row is not None
                size, block = int(row[0]), int(row[1])
                if size <= self.partition_bytes:
                    return None  # one share: `extract` reads it whole
                keep_stream = await self._begin_snapshot(conn, ctx)
            exporter, at, name = await self._export(ctx)
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as data:
                    columns = await self._import(data, name)
                    await data.execute("COMMIT")
            except BaseException:
                await asyncio.to_thread(exporter.close)
                raise
        except psycopg.OperationalError as exc:
            raise TransientError(self._where(slot, exc)) from exc
        except psycopg.Error as exc:
            raise TerminalError(self._where(slot, exc)) from exc
        self._exports[ctx.run_id] = exporter
        self._snapshot_taken(ctx, at, confirmed, columns, keep_stream)
        # the heap only grows while the snapshot is held (VACUUM cannot cut blocks holding rows it sees), and rows
        # written since are not in it: the last share runs to the end, wherever that is by then
        shares = min(MAX_PARTITIONS, -(-size // self.partition_bytes))
        step = -(-(size // block) // shares)
        return [
            Partition(
                _Share(
                    snapshot=name,
                    at=lsn_text(at),
                    columns=columns,
                    first=i * step,
                    last=(i + 1) * step if i < shares - 1 else None,
                ).model_dump()
            )
            for i in range(shares)
        ]

    async def _begin_snapshot(self, conn: psycopg.AsyncConnection[Any], ctx: ExtractContext) -> bool:
        """Mark the snapshot run in the log and refuse a run that began one before; whether the slot must keep what
        it holds (the next run reads it again) rather than move to the snapshot.

        It must when the slot holds changes (a re-snapshot: rows deleted since the last run are in no snapshot, and
        the destination's rows from earlier runs may carry versions above the new snapshot's, which sit just below
        its position) or when an earlier snapshot that did not complete is out there (its rows need the deletes since
        it). Read again, every change before the snapshot is a state the table had, each versioned by its place in
        the log: for every key the highest version, of those and of the snapshot's row, is the table's."""
        mine = f"snapshot {ctx.pipeline} {ctx.run_id}"
        upto = await self._mark(conn, mine)
        keep_stream = False
        seen = 0  # markers of this run: the one just written, and one of each earlier attempt
        async with contextlib.aclosing(self._peek(conn, ctx, upto, None)) as messages:
            async for msg in messages:
                keep_stream |= isinstance(msg, (Change, Truncate))
                if isinstance(msg, Message) and msg.prefix == MARKER_PREFIX:
                    text = msg.content.decode(errors="replace")
                    seen += text == mine
                    keep_stream |= text.startswith("snapshot ") and text != mine
        if seen > 1:
            raise TerminalError(
                f"run {ctx.run_id} began a snapshot of {self.schema_name}.{self.table_name} before it was "
                "stopped; its batches keep their ids, so it is not taken again under this run: the next run takes "
                "a new snapshot"
            )
        return keep_stream

    async def _export(self, ctx: ExtractContext) -> tuple[psycopg.Connection[Any], int, str]:
        """A temporary slot that exports a snapshot: (its connection, which keeps the snapshot importable until it
        closes, the snapshot's log position, the snapshot's name)."""
        import psycopg

        # the replication protocol's CREATE_REPLICATION_SLOT exports a snapshot; SQL's function cannot
        exporter: psycopg.Connection[Any] = await asyncio.to_thread(
            lambda: psycopg.connect(self.conninfo, replication="database", autocommit=True)
        )
        try:
            temp = f"jetl_snap_{abs(hash(ctx.run_id)) % 10**12}"
            res = await asyncio.to_thread(
                exporter.pgconn.exec_,
                f"CREATE_REPLICATION_SLOT {temp} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT".encode(),
            )
            if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                raise TerminalError(self._where(temp, RuntimeError((res.error_message or b"").decode())))
            at = lsn_int((res.get_value(0, 1) or b"0/0").decode())
            name = (res.get_value(0, 2) or b"").decode()
            if at >= MAX_LSN:
                raise TerminalError(f"log position {lsn_text(at)} is past what versions can order ({MAX_LSN})")
        except BaseException:
            await asyncio.to_thread(exporter.close)
            raise
        return exporter, at, name

    async def _import(self, data: psycopg.AsyncConnection[Any], name: str) -> list[list[Any]]:
        """Begin a read-only transaction on the exported snapshot `name`; the table's columns in it."""
        from psycopg import sql

        await data.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await data.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(name)))
        return await self._columns(data)

    async def _rows(
        self, data: psycopg.AsyncConnection[Any], columns: list[list[Any]], at: int, first: int, last: int | None
    ) -> AsyncIterator[Chunk]:
        """The rows of the snapshot `data` holds in heap blocks `first` up to `last` (None: to the end; a row's
        block is where it was stored when the snapshot was taken), versioned below `at` from the block's number:
        the rows of any share of the table take versions of their own."""
        select = ", ".join(f'"{c}"::text' for c, _ in columns)
        query = f'SELECT {select} FROM "{self.schema_name}"."{self.table_name}"'
        if first or last is not None:  # a TID range scan (PostgreSQL 14+): reads only those blocks
            query += f" WHERE ctid >= '({int(first)},0)'::tid"
            query += f" AND ctid < '({int(last)},0)'::tid" if last is not None else ""
        cur = data.cursor(name="jetl_cdc_snapshot")
        await cur.execute(query)  # type: ignore[arg-type]  # built from checked identifiers and ints
        version = max(0, at * VERSION_STRIDE - SNAPSHOT_SPAN) + first * ROWS_PER_BLOCK
        types = [oid for _, oid in columns]
        names = [c for c, _ in columns]
        while rows := await cur.fetchmany(self.chunk_size):
            records: list[Record] = []
            for row in rows:
                record = {n: decode_value(t, v) for n, t, v in zip(names, types, row, strict=True)}
                record[self.delete_field] = False
                records.append(record)
            yield Chunk(records, position={"snapshot": lsn_text(at)}, version=version)
            version += len(records)
        await cur.close()
        await data.execute("COMMIT")

    def _snapshot_taken(
        self, ctx: ExtractContext, at: int, confirmed: int, columns: list[list[Any]], keep_stream: bool
    ) -> None:
        """The snapshot at `at` holds every change committed before it: the slot may forget them, unless an earlier
        snapshot's rows are out there, whose deletes since it only the stream carries."""
        target = None if keep_stream else at
        cursor = {
            "slot": self.slot_for(ctx.pipeline),
            "snapshot": lsn_text(at),
            "confirmed": lsn_text(max(confirmed, at) if target is not None else confirmed),
            "columns": columns,
        }
        self._done(ctx, target, cursor)

    async def _changes(self, conn: psycopg.AsyncConnection[Any], ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """The changes committed before this run's marker (at most `max_changes`, whole transactions)."""
        cursor = dict(ctx.cursor or {})
        expected = [list(c) for c in cursor.get("columns", [])]
        # every transaction committed before the position the last completed run confirmed is on JETL_RAW already:
        # a slot that PostgreSQL's crash recovery took back (an advance is written at the next checkpoint) reads
        # them again, and each attempt of this run skips them alike, so its batches stay the same
        floor = lsn_int(cursor["confirmed"]) if cursor.get("confirmed") else 0
        # what the slot kept from before the snapshot (`_begin_snapshot`) is read again as it was: the snapshot
        # already shows its TRUNCATE and its column changes, which stop the pipeline only after the snapshot
        snapshot = lsn_int(cursor["snapshot"]) if cursor.get("snapshot") else 0
        skip = before = False
        mine = f"run {ctx.pipeline} {ctx.run_id}"
        upto = await self._mark(conn, mine)
        relation: Relation | None = None
        target: int | None = None
        records: list[Record] = []
        first = 0  # the version of records[0]
        version = 0
        index = 0
        async with contextlib.aclosing(self._peek(conn, ctx, upto, self.max_changes)) as messages:
            async for msg in messages:
                if isinstance(msg, Begin):
                    if msg.final_lsn >= MAX_LSN:
                        raise TerminalError(f"log position {lsn_text(msg.final_lsn)} is past what versions can order")
                    version, index = msg.final_lsn * VERSION_STRIDE, 0
                    skip, before = msg.final_lsn < floor, msg.final_lsn < snapshot
                elif isinstance(msg, Relation):
                    if (msg.namespace, msg.name) == (self.schema_name, self.table_name):
                        shape = [[c.name, c.type_oid] for c in msg.columns]
                        if expected and shape != expected and not skip and not before:
                            await self._column_change(ctx, msg.qualified, expected, shape)
                            expected = cursor["columns"] = shape  # added columns: the schema contract decides
                        relation = msg
                elif isinstance(msg, Change):
                    if skip or relation is None or msg.relation != relation.oid:
                        continue
                    if index >= VERSION_STRIDE:
                        raise TerminalError(f"a transaction of over {VERSION_STRIDE - 1} changes: versions overflow")
                    if not records:
                        first = version + index
                    records.append(self._record(relation, msg))
                    index += 1
                    if len(records) >= self.chunk_size:
                        yield Chunk(records, version=first)
                        records = []
                elif isinstance(msg, Commit):
                    target = max(target or 0, msg.end_lsn)
                    if records:  # a chunk never spans two transactions: its versions are consecutive
                        yield Chunk(records, version=first, position={"lsn": lsn_text(msg.end_lsn)})
                        records = []
                elif isinstance(msg, Truncate):
                    if relation is not None and relation.oid in msg.relations and not skip and not before:
                        raise TerminalError(
                            f"TRUNCATE of {relation.qualified}: the pipeline stops here (nothing after it was read). "
                            f"Empty the destination as you mean to, then take a new snapshot: jetl resnapshot "
                            f"{ctx.pipeline}"
                        )
                elif isinstance(msg, Message) and msg.prefix == MARKER_PREFIX and msg.content.decode() == mine:
                    target = msg.lsn  # the first marker of this run: where its first attempt stopped
                    break
        cursor["confirmed"] = lsn_text(target) if target is not None else cursor.get("confirmed")
        self._done(ctx, target, cursor)

    async def _column_change(self, ctx: ExtractContext, table: str, was: list[list[Any]], now: list[list[Any]]) -> None:
        """Let a column change through when it only added columns that rows already in the table hold no value of
        (no DEFAULT, not generated): their records carry the new fields, and the pipeline's schema contract decides
        what becomes of them (docs/schema.md: `evolve` adds the columns, `freeze` holds the batch, None ignores them),
        as it does for any source's drift. Otherwise raise TerminalError: rows the slot never saw change took values
        (a DEFAULT, a retyped or renamed or dropped column), which only a new snapshot reads."""
        import psycopg

        added = [name for name, _ in now[len(was) :]] if now[: len(was)] == was else []
        filled: list[str] = []
        if added:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT a.attname FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
                    "AND d.adnum = a.attnum WHERE a.attrelid = %s::regclass AND a.attname = ANY(%s) "
                    "AND NOT a.attisdropped AND NOT a.atthasmissing AND d.adbin IS NULL AND a.attgenerated = ''",
                    (f'"{self.schema_name}"."{self.table_name}"', added),
                )
                plain = {row[0] for row in await cur.fetchall()}
            filled = [name for name in added if name not in plain]
            if not filled:
                return
        what = (
            f"column(s) {', '.join(filled)} were added with a DEFAULT (or generated): the rows already in the table "
            "took values that no change carried"
            if filled
            else f"was {was}, now {now}"
        )
        raise TerminalError(
            f"the columns of {table} changed ({what}): the pipeline stops here, before the first change in the new "
            f"shape. Update the pipeline's schema, then take a new snapshot: jetl resnapshot {ctx.pipeline} (a column "
            "added with no default goes on, through the pipeline's schema contract)"
        )

    def _record(self, relation: Relation, change: Change) -> Record:
        values = change.new if change.new is not None else change.old
        assert values is not None
        record: Record = {}
        for i, col in enumerate(relation.columns):
            value = values[i] if i < len(values) else None
            if value is UNCHANGED:
                old = change.old[i] if change.old is not None and i < len(change.old) else UNCHANGED
                if old is UNCHANGED:
                    raise TerminalError(
                        f"an update of {relation.qualified} left out the unchanged large value of {col.name}: set "
                        f"ALTER TABLE {relation.qualified} REPLICA IDENTITY FULL so updates carry it"
                    )
                value = old
            record[col.name] = decode_value(col.type_oid, value)
        record[self.delete_field] = change.op == "D"
        return record
