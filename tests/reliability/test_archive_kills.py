"""Kill points during archiving: the transformer service (which also runs the archiver) is SIGKILLed again and
again while a run's batches are being transformed and archived, and after every run: it completed exactly, every one
of its raw batches is in the archive once and intact (its SHA-256 checks), and it replays from the archive alone.

A kill between the archive's temp file and its rename leaves no object (the batch is redelivered and written again);
a kill after the write but before the ack leaves an intact object the redelivery does not write again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetl import subjects
from jetl.archive import Archive, read_raw
from jetl.messages.wire import decode_batch
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.subjects import Kind

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 500  # 20 batches of 25
RUNS = 2
KILL_AT = (4, 9, 14, 19, 24, 29, 34)
"""Event indexes after which the transformer is SIGKILLed (and restarted): all inside a run's ~64 events."""


def test_sigkills_while_archiving_lose_no_batch_and_leave_none_damaged(crash_lab: Any, fault_matrix: Any) -> None:
    results: list[Any] = []
    archive = Archive(str(crash_lab.data / "archive"))

    async def go() -> dict[str, int] | None:
        with crash_lab.stack() as stack:
            async with JetlClient(crash_lab.settings) as jc:
                for _ in range(RUNS):
                    crash_lab.add_input(ROWS)

                    def at(n: int, st: RunState, seen: list[str]) -> str | None:
                        return "transformer" if n in KILL_AT else None

                    results.append(await asyncio.wait_for(crash_lab.run(jc, stack, at), 240))
                    stack.check()
                # the archiver acks beside the loader, not before the run completes (a batch redelivered after a kill
                # comes back after the ack wait): JETL_RAW empties once every batch is transformed and archived
                js = jc.conn.jetstream()
                for _ in range(600):
                    if (await js.stream_info(subjects.stream_name(Kind.RAW))).state.messages == 0:
                        break
                    await asyncio.sleep(0.1)
                for r in results:  # read back as a replay would, with JETL_RAW holding none of it any more
                    info = await js.stream_info(subjects.stream_name(Kind.RAW))
                    assert info.state.messages == 0
                    got = [b async for b, _ in read_raw(jc.conn, archive, "crash", r.state.run_id)]
                    assert sum(b.count for b in got) == ROWS
                return (await jc.destination_count("crash")).by_run

    by_run = asyncio.run(go())
    for r in results:
        ok = crash_lab.exact(r, ROWS, by_run)
        fault_matrix.record_kill(len(r.killed))
        fault_matrix.record_run(ok)
        st = r.state
        assert ok, f"kills {r.killed}: {st.status} {st.counts()} {st.error or ''}"
        assert len(r.killed) >= 5, f"the run ended before its kill points: {r.killed}"
        ids = archive.batches("crash", st.run_id)
        assert len(ids) == st.expected_batches == ROWS // 25
        for part_id in ids:  # intact: the checksum holds and the envelope is the batch's own
            batch, _ = decode_batch(archive.get("crash", st.run_id, part_id))
            assert batch.part_id == part_id
