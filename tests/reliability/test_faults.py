"""Faults an operator meets, each run through the real stack (nats-server with a 1 MB max_payload, the four services
as processes, a file destination): a record larger than any message in the middle of a file, a batch larger than a
message, a stage stalled past the ack wait (once: the run recovers; every time: the run fails, naming the batch), a
run cancelled by hand, and a property-based fuzz of input lines.

Each test asserts what a user sees: exactly the expected rows with distinct ids in the destination, the ledger
reconciling, every bad record in the DLQ with its reason (and its `file:line`), and the run's final status.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from jetl.cli import app
from jetl.messages.deadletter import OVERSIZED_RECORD
from jetl.ops.client import JetlClient
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.subjects import DLQ_BODIES_BUCKET
from jetl.testing.servers import NatsServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACK_WAIT = 3.0
MAX_PAYLOAD = 1024 * 1024  # the server's max_payload (1 MB): a 1.5 MB line cannot travel in any message
POISON = 999_999
"""A record id the `stall` pipeline's transformer hangs on, every delivery, until the test releases it."""
STALL_ONCE = 888_888
"""A record id it stalls on once, for twice the ack wait, then goes on."""

PIPELINES = """
import pathlib
import time
from pydantic import BaseModel
from jetl import FileExtractor, FileLoader, Pipeline
from jetl.errors import DestinationUnavailable, TerminalError

MARKS = pathlib.Path("MARKS")


class Destination(FileLoader):
    '''A file destination that is away while MARKS/outage exists (each try noted in MARKS/tries), and refuses
    every row, as a table whose schema changed does, while MARKS/refuse exists.'''

    def load(self, records, ctx):
        if (MARKS / "refuse").exists():
            raise TerminalError("table dest has no column 'name' (its schema changed): the insert was refused")
        if (MARKS / "outage").exists():
            with open(MARKS / "tries", "a") as f:
                f.write(f"{time.time()}\\n")
            raise DestinationUnavailable("dest: connection refused")
        return super().load(records, ctx)

class Row(BaseModel):
    id: int
    name: str

class Stall:
    '''Hangs on a batch holding POISON (each delivery, until MARKS/release exists); stalls once on STALL_ONCE.'''

    def transform(self, records):
        ids = {r.get("id") for r in records}
        if POISON in ids:
            with open(MARKS / "poison", "a") as f:
                f.write("x")
            while not (MARKS / "release").exists():
                time.sleep(0.05)
        if STALL_ONCE in ids and not (MARKS / "stalled").exists():
            (MARKS / "stalled").write_text("x")
            time.sleep(STALL_S)
        return records

def register_pipelines():
    return [
        Pipeline(name="big", extractors=[FileExtractor("IN/big/*.jsonl", chunk_size=100)],
                 loader=FileLoader("OUT"), schema=Row, batch_size=1000),
        Pipeline(name="fuzz", extractors=[FileExtractor("IN/fuzz/*.jsonl", chunk_size=20)],
                 loader=FileLoader("OUT"), schema=Row, batch_size=40),
        Pipeline(name="stall", extractors=[FileExtractor("IN/stall/*.jsonl", chunk_size=25)],
                 transformers=[Stall()], loader=FileLoader("OUT"), schema=Row, batch_size=25),
        Pipeline(name="grow", extractors=[FileExtractor("IN/grow/*.jsonl")], loader=FileLoader("OUT"), schema=Row,
                 batch_size=40),
        Pipeline(name="csvs", extractors=[FileExtractor("IN/csvs/*.csv", columns=["id", "name"])],
                 loader=FileLoader("OUT"), schema=Row, batch_size=40),
        Pipeline(name="dest", extractors=[FileExtractor("IN/dest/*.jsonl", chunk_size=25)],
                 loader=Destination("OUT"), schema=Row, batch_size=25),
    ]
"""


class Env:
    """The running stack and where its pipelines read and write."""

    def __init__(self, root: Path, stack: Stack, settings: JetlSettings) -> None:
        self.root, self.stack, self.settings = root, stack, settings
        self.inputs, self.out, self.marks = root / "in", root / "out", root / "marks"
        self.files = itertools.count()

    def write(self, pipeline: str, lines: list[bytes]) -> Path:
        """A new input file of `pipeline` (the file cursor skips the ones loaded before)."""
        path = self.inputs / pipeline / f"part{next(self.files):04d}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return path

    def rows(self, pipeline: str, run_id: str) -> list[dict[str, Any]]:
        """The rows a run put in the destination."""
        folder = self.out / pipeline / run_id
        return [
            orjson.loads(line) for part in sorted(folder.glob("*.jsonl")) for line in part.read_bytes().splitlines()
        ]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("faults")
    for sub in ("in/big", "in/fuzz", "in/stall", "in/dest", "in/csvs", "in/grow", "out", "marks", "pipelines"):
        (root / sub).mkdir(parents=True)
    code = (
        PIPELINES.replace("IN/", f"{root / 'in'}/")
        .replace('"OUT"', repr(str(root / "out")))
        .replace('"MARKS"', repr(str(root / "marks")))
        .replace("STALL_ONCE", str(STALL_ONCE))
        .replace("POISON", str(POISON))
        .replace("STALL_S", str(ACK_WAIT * 2))
    )
    (root / "pipelines" / "faults_pipeline.py").write_text(code)
    server = NatsServer(root / "nats", max_payload_mb=MAX_PAYLOAD // (1024 * 1024)).start()
    extra = {"JETL_NATS__ACK_WAIT": str(ACK_WAIT), "JETL_STALL_CHECK_SECONDS": "1"}
    try:
        with Stack(data_dir=root / "data", pipelines_dir=root / "pipelines", nats_url=server.url, extra_env=extra) as s:
            yield Env(root, s, JetlSettings(nats=NatsSettings(url=server.url, ack_wait=ACK_WAIT)))
    finally:
        server.stop()


async def run_to_end(env: Env, pipeline: str, timeout: float = 120) -> RunState:
    async with JetlClient(env.settings) as jc:
        req = await jc.request_run(pipeline)
        return await jc.wait(pipeline, req.run_id, timeout=timeout)


async def dead_records(env: Env, pipeline: str, run_id: str) -> list[dict[str, Any]]:
    """Every dead-lettered record of a run, with its letter's stage, error type and reference."""
    async with JetlClient(env.settings) as jc:
        letters = await jc.dead_letter_log(pipeline)
    return [
        {"stage": dl.stage, "error_type": dl.error_type, "reason": dl.reason, "body_ref": dl.body_ref, **rec}
        for _, dl in letters
        if dl.run_id == run_id
        for rec in dl.records or [{}]
    ]


async def kept_body(env: Env, ref: str) -> bytes:
    async with JetlClient(env.settings) as jc:
        bucket, _, name = ref.partition("/")
        assert bucket == DLQ_BODIES_BUCKET
        store = await jc.conn.jetstream().object_store(bucket)
        return bytes((await store.get(name)).data or b"")


def good(i: int, pad: int = 0) -> bytes:
    return json.dumps({"id": i, "name": f"r{i}" + "x" * pad}).encode()


def assert_exact(env: Env, st: RunState, ids: list[int], rejected: int) -> None:
    """The run completed, the destination holds exactly `ids` (each once), and the ledger reconciles."""
    assert st.status == "completed", st.error
    rows = env.rows(st.pipeline, st.run_id)
    got = sorted(r["id"] for r in rows)
    assert got == sorted(ids) and len(set(got)) == len(got)
    assert (st.extracted, st.loaded, st.rejected, st.filtered) == (len(ids) + rejected, len(ids), rejected, 0)
    assert st.reconciles


def test_a_record_over_max_payload_mid_file_is_dead_lettered_by_reference_and_the_rest_loads(
    env: Env, fault_matrix: Any
) -> None:
    huge = json.dumps({"id": 5000, "name": "h" * (MAX_PAYLOAD + MAX_PAYLOAD // 2)}).encode()
    lines = [good(i) for i in range(500)] + [huge] + [good(i) for i in range(500, 1000)]
    path = env.write("big", lines)

    st = asyncio.run(run_to_end(env, "big"))

    dead = asyncio.run(dead_records(env, "big", st.run_id))
    fault_matrix.record_bad(1, sum(1 for d in dead if d["origin"] == f"{path}:501" and d["reason"]))
    assert_exact(env, st, list(range(1000)), rejected=1)
    fault_matrix.record_run(exact=True)
    assert len(dead) == 1
    d = dead[0]
    assert d["stage"] == "extract" and d["error_type"] == OVERSIZED_RECORD
    assert d["origin"] == f"{path}:501"
    assert "exceeds the largest message" in d["message"] and f"max_payload {MAX_PAYLOAD}" in d["message"]
    assert asyncio.run(kept_body(env, d["ref"])).rstrip(b"\n") == huge  # the body itself, by reference

    listed = CliRunner().invoke(app, ["dlq", "list", "big", "--run", st.run_id, "--json"], env=_cli_env(env))
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert row["ref"] == d["ref"] and row["status"] == "too large" and row["origin"] == f"{path}:501"


def test_a_batch_over_max_payload_is_cut_by_bytes_and_every_record_loads(env: Env) -> None:
    # 1000 records of ~2.5 kB: one batch by records (batch_size 1000), ~2.5 MB by bytes, over the 1 MB max_payload
    env.write("big", [good(10_000 + i, pad=2500) for i in range(1000)])

    st = asyncio.run(run_to_end(env, "big"))

    assert_exact(env, st, [10_000 + i for i in range(1000)], rejected=0)
    assert len(st.batches) >= 3  # cut by bytes, not by records
    assert asyncio.run(dead_records(env, "big", st.run_id)) == []


def test_a_stall_past_the_ack_wait_once_recovers_exactly(env: Env) -> None:
    ids = list(range(20_000, 20_200))
    env.write("stall", [good(i) for i in ids[:100]] + [good(STALL_ONCE)] + [good(i) for i in ids[100:]])

    st = asyncio.run(run_to_end(env, "stall"))

    assert (env.marks / "stalled").exists()  # the stall happened: twice the ack wait on one batch
    assert_exact(env, st, [*ids, STALL_ONCE], rejected=0)


def _cli_env(env: Env) -> dict[str, str]:
    return {"JETL_NATS__URL": env.settings.nats.url}


async def _follow_until(
    env: Env, pipeline: str, run_id: str, done: Any, on_event: Any = None, timeout: float = 150
) -> RunState:
    state: RunState | None = None

    async def go() -> RunState:
        nonlocal state
        async with JetlClient(env.settings) as jc:
            async for ev in jc.follow(pipeline, run_id):
                state = fold(state, ev)
                if on_event is not None:
                    on_event(state)
                if done(state):
                    return state
        raise AssertionError("unreachable")

    return await asyncio.wait_for(go(), timeout)


def test_a_batch_no_stage_can_finish_fails_its_run_naming_it_and_later_runs_go_ahead(env: Env) -> None:
    """The transformer stalls on a poison batch past the ack wait and is killed each time (as an operator or an OOM
    killer would): after max_deliver deliveries JetStream gives up; the run fails naming the batch and stage, the
    batch is in the DLQ, and the next run of the pipeline (which keeps a cursor) is not refused."""
    (env.marks / "release").unlink(missing_ok=True)
    (env.marks / "poison").unlink(missing_ok=True)
    ids = list(range(30_000, 30_100))
    env.write("stall", [good(i) for i in ids[:50]] + [good(POISON)] + [good(i) for i in ids[50:]])

    async def go() -> RunState:
        async with JetlClient(env.settings) as jc:
            req = await jc.request_run("stall")
        seen = 0
        proc = env.stack.procs["transformer"]

        async def killer() -> None:
            nonlocal seen
            while True:
                n = len((env.marks / "poison").read_text()) if (env.marks / "poison").exists() else 0
                if n > seen:  # stuck on the poison batch again: kill it, start a new one
                    seen = n
                    await asyncio.sleep(0.5)
                    proc.stop(kill=True)
                    proc.start()
                await asyncio.sleep(0.2)

        task = asyncio.create_task(killer())
        try:
            return await _follow_until(env, "stall", req.run_id, lambda s: s.status in ("completed", "failed"))
        finally:
            task.cancel()

    st = asyncio.run(go())
    (env.marks / "release").write_text("x")

    assert st.status == "failed"
    poison_batch = f"{st.run_id}/000002"  # lines 51.. are the third batch of 25
    assert poison_batch in (st.error or "") and "transform" in (st.error or "")
    assert "max_deliver" in (st.error or "")
    dead = asyncio.run(dead_records(env, "stall", st.run_id))
    assert {d["stage"] for d in dead} == {"transform"}
    assert any((d.get("record") or {}).get("id") == POISON for d in dead) or dead[0]["body_ref"]
    assert all("max_deliver" in d["reason"] for d in dead)
    # every other batch loads: the ledger of the failed run adds up, with the poison batch (lines 51-75) rejected
    assert _settled_reconciles(env, st)
    assert sorted(r["id"] for r in env.rows("stall", st.run_id)) == ids[:50] + ids[74:]

    nxt = list(range(31_000, 31_030))
    env.write("stall", [good(i) for i in nxt])
    after = asyncio.run(run_to_end(env, "stall"))
    assert after.status == "completed", after.error  # a failed run never blocks the pipeline
    # the file cursor moves only when a run completes: the next run reads the failed run's file again (released)
    assert sorted(r["id"] for r in env.rows("stall", after.run_id)) == sorted([*ids, POISON, *nxt])


def _settled_reconciles(env: Env, st: RunState) -> bool:
    """Wait until every batch of the run is settled in its folded state, and say whether its ledger reconciles."""

    async def go() -> bool:
        deadline = time.monotonic() + 60
        async with JetlClient(env.settings) as jc:
            while True:
                now = await jc.run_state(st.pipeline, st.run_id)
                if now is not None and (now.reconciles or time.monotonic() > deadline):
                    rows = env.rows(st.pipeline, st.run_id)
                    assert len(rows) == now.loaded and len({r["id"] for r in rows}) == len(rows)
                    return now.reconciles
                await asyncio.sleep(0.5)

    return asyncio.run(go())


def test_cancel_ends_a_stuck_run_and_releases_the_overlap_guard(env: Env) -> None:
    (env.marks / "release").unlink(missing_ok=True)
    (env.marks / "poison").unlink(missing_ok=True)
    env.write("stall", [good(POISON)] + [good(i) for i in range(40_000, 40_010)])

    async def stuck_then_refused() -> tuple[str, RunState]:
        async with JetlClient(env.settings) as jc:
            stuck = await jc.request_run("stall")
            deadline = time.monotonic() + 60
            while not (env.marks / "poison").exists():
                assert time.monotonic() < deadline, "the transformer never took the poison batch"
                await asyncio.sleep(0.2)
            refused = await jc.request_run("stall", force=True)
            return stuck.run_id, await jc.wait("stall", refused.run_id, timeout=60)

    stuck, refused = asyncio.run(stuck_then_refused())
    assert refused.status == "failed" and "OverlappingRun" in (refused.error or "") and stuck in (refused.error or "")

    out = CliRunner().invoke(
        app, ["runs", "cancel", stuck, "--reason", "poison input; fixed upstream", "--json"], env=_cli_env(env)
    )
    assert out.exit_code == 0, out.output
    cancelled = json.loads(out.output)
    assert cancelled["status"] == "failed" and "poison input; fixed upstream" in cancelled["error"]

    (env.marks / "release").write_text("x")  # the transformer may go on: the cancelled run stays cancelled
    nxt = list(range(41_000, 41_020))
    env.write("stall", [good(i) for i in nxt])
    after = asyncio.run(run_to_end(env, "stall"))
    assert after.status == "completed", after.error
    # the cancelled run moved no cursor: its file is read again with the new one
    assert sorted(r["id"] for r in env.rows("stall", after.run_id)) == sorted([POISON, *range(40_000, 40_010), *nxt])

    async def final(run_id: str) -> RunState | None:
        async with JetlClient(env.settings) as jc:
            return await jc.run_state("stall", run_id)

    st = asyncio.run(final(stuck))
    assert st is not None and st.status == "failed" and st.cancelled


OUTAGE_S = 30.0
"""How long the destination stays away: well past the ack rule's own backoff (about 4 s over MAX_DELIVER)."""


def test_a_destination_away_for_30_s_is_ridden_out_and_the_run_loads_exactly(env: Env) -> None:
    (env.marks / "outage").write_text("x")
    (env.marks / "tries").unlink(missing_ok=True)
    ids = list(range(50_000, 50_060))
    env.write("dest", [good(i) for i in ids])

    async def through_outage() -> RunState:
        async with JetlClient(env.settings) as jc:
            req = await jc.request_run("dest")
            deadline = time.monotonic() + 120
            while True:  # the outage ends once the loader has met it for OUTAGE_S (by its own tries' clock)
                tries = (
                    [float(t) for t in (env.marks / "tries").read_text().split()]
                    if (env.marks / "tries").exists()
                    else []
                )
                if tries and tries[-1] - tries[0] >= OUTAGE_S:
                    break
                assert time.monotonic() < deadline, "the loader never met the outage for long"
                now = await jc.run_state("dest", req.run_id)
                assert now is None or now.status not in ("completed", "failed"), f"ended in the outage: {now.error}"
                await asyncio.sleep(0.5)
            (env.marks / "outage").unlink()
            return await jc.wait("dest", req.run_id, timeout=240)

    st = asyncio.run(through_outage())
    assert_exact(env, st, ids, rejected=0)


def test_a_run_whose_every_record_the_destination_refused_fails_and_keeps_its_cursor(env: Env) -> None:
    (env.marks / "refuse").write_text("x")
    ids = list(range(60_000, 60_030))
    env.write("dest", [good(i) for i in ids])
    try:
        st = asyncio.run(run_to_end(env, "dest"))
    finally:
        (env.marks / "refuse").unlink()
    assert st.status == "failed" and st.loaded == 0 and st.rejected == 30 and st.reconciles
    assert "refused every record" in (st.error or "") and "no column 'name'" in (st.error or "")
    out = CliRunner().invoke(app, ["status", "dest", "--json"], env=_cli_env(env))
    assert out.exit_code == 0, out.output
    shown = [r for r in json.loads(out.output) if r["run_id"] == st.run_id]
    assert shown and shown[0]["status"] == "failed", out.output
    # its cursor did not move: the next run reads the refused file again, with a new one
    more = list(range(61_000, 61_010))
    env.write("dest", [good(i) for i in more])
    after = asyncio.run(run_to_end(env, "dest"))
    assert after.status == "completed", after.error
    assert sorted(r["id"] for r in env.rows("dest", after.run_id)) == sorted([*ids, *more])


def test_a_cancel_that_reaches_the_tracker_after_the_run_completed_is_refused_and_the_run_stays_completed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = list(range(62_000, 62_010))
    env.write("dest", [good(i) for i in ids])
    done = asyncio.run(run_to_end(env, "dest"))
    assert done.status == "completed", done.error
    # the race: `jetl runs cancel` read the log just before run.completed reached it, so it saw the run unfinished
    seen = JetlClient.events

    async def before_it_completed(self: JetlClient, run_id: str, pipeline: str | None = None) -> list[Any]:
        return [ev for ev in await seen(self, run_id, pipeline) if ev.type != "run.completed"]

    monkeypatch.setattr(JetlClient, "events", before_it_completed)
    out = CliRunner().invoke(app, ["runs", "cancel", done.run_id, "--reason", "too late"], env=_cli_env(env))
    monkeypatch.undo()
    assert out.exit_code == 1 and "completed before the cancel reached the tracker" in out.output, out.output

    async def after() -> tuple[RunState | None, RunState]:
        async with JetlClient(env.settings) as jc:
            return await jc.verdict("dest", done.run_id), await jc.wait("dest", done.run_id, timeout=30)

    folded, followed = asyncio.run(after())
    assert folded is not None and folded.status == "completed" and not folded.cancelled
    assert followed.status == "completed" and followed.error is None  # a client following the run agrees
    # the cursor moved with the completion: the next run reads only a new file
    more = list(range(62_100, 62_105))
    env.write("dest", [good(i) for i in more])
    nxt = asyncio.run(run_to_end(env, "dest"))
    assert sorted(r["id"] for r in env.rows("dest", nxt.run_id)) == more


def test_a_csv_with_a_stray_quote_loads_every_other_row_and_dead_letters_the_bad_one_with_its_body(env: Env) -> None:
    rows = [f'{i},"bad name' if i == 30 else f'{i},he said "hi"' if i == 75 else f"{i},n{i}" for i in range(1, 123)]
    src = env.inputs / "csvs" / "stray.csv"
    src.write_text("id,name\n" + "".join(f"{row}\n" for row in rows))
    st = asyncio.run(run_to_end(env, "csvs"))
    assert st.status == "completed", st.error
    assert (st.extracted, st.loaded, st.rejected) == (122, 121, 1) and st.reconciles  # the file's 122 rows
    got = sorted(r["id"] for r in env.rows("csvs", st.run_id))
    assert got == [i for i in range(1, 123) if i != 30]
    dead = asyncio.run(dead_records(env, "csvs", st.run_id))
    assert [(d["origin"], d["record"]) for d in dead] == [(f"{src}:31", '30,"bad name')]


def test_a_file_appended_to_between_runs_loads_only_what_was_appended(env: Env) -> None:
    log = env.inputs / "grow" / "events.jsonl"
    log.write_bytes(b"".join(good(i) + b"\n" for i in range(70_000, 70_100)))
    first = asyncio.run(run_to_end(env, "grow"))
    assert_exact(env, first, list(range(70_000, 70_100)), rejected=0)
    with log.open("ab") as fh:  # a writer appends, as to a log file
        fh.write(b"".join(good(i) + b"\n" for i in range(70_100, 70_130)) + b"{broken\n")
    second = asyncio.run(run_to_end(env, "grow"))
    assert_exact(env, second, list(range(70_100, 70_130)), rejected=1)  # none of the first 100 again
    dead = asyncio.run(dead_records(env, "grow", second.run_id))
    assert [d["origin"] for d in dead] == [f"{log}:131"]  # its line in the whole file


# Lines a user's file may hold. Each kind says whether it loads (and as which id) or is dead-lettered.
ids = itertools.count(100_000)


def _line(kind: str, k: int, size: int) -> tuple[bytes, int | None]:
    """(the line, the id it loads as, or None when it must be dead-lettered)."""
    if kind == "good":
        return good(k), k
    if kind == "utf8":
        return b'{"id": ' + str(k).encode() + b', "name": "bad \xff\xfe bytes"}', None
    if kind == "non_object":
        return [b"[1, 2, 3]", b'"just a string"', b"42", b"null", b"true"][k % 5], None
    if kind == "nan":
        return [b'{"id": ' + str(k).encode() + b', "name": NaN}', b'{"id": Infinity, "name": "x"}'][k % 2], None
    if kind == "deep":
        depth = [50, 600, 5000][k % 3]  # within orjson's limit it parses (and fails the schema); beyond, it does not
        return b'{"id": ' + str(k).encode() + b', "name": ' + b"[" * depth + b"]" * depth + b"}", None
    if kind == "huge":  # a huge field: loads while it fits a message, dead-lettered by reference once it does not
        line = good(k, pad=size)
        return line, (k if len(line) < MAX_PAYLOAD // 2 else None)
    if kind == "dup":  # duplicate keys: JSON leaves it to the parser; jetl's (orjson) keeps the last, as most do
        return b'{"id": -1, "name": "first", "id": ' + str(k).encode() + b', "name": "last"}', k
    raise AssertionError(kind)


KINDS = st.sampled_from(["good", "good", "good", "utf8", "non_object", "nan", "deep", "huge", "dup"])
LINES = st.lists(st.tuples(KINDS, st.sampled_from([10_000, 200_000, MAX_PAYLOAD + 1000])), min_size=1, max_size=60)


EVERY_KIND = [
    ("good", 0),
    ("utf8", 0),
    *[("non_object", 0)] * 5,
    ("nan", 0),
    ("nan", 0),
    *[("deep", 0)] * 3,
    ("huge", 200_000),
    ("huge", MAX_PAYLOAD + 1000),
    ("dup", 0),
    ("good", 0),
]


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(lines=LINES)
@example(lines=EVERY_KIND)
def test_fuzzed_input_lines_load_exactly_or_are_dead_lettered_with_file_and_line(
    env: Env, fault_matrix: Any, lines: Any
) -> None:
    made = [_line(kind, next(ids), size) for kind, size in lines]
    path = env.write("fuzz", [line for line, _ in made])
    expected = [k for _, k in made if k is not None]
    bad = {f"{path}:{n}" for n, (_, k) in enumerate(made, start=1) if k is None}

    st_ = asyncio.run(run_to_end(env, "fuzz"))

    dead = asyncio.run(dead_records(env, "fuzz", st_.run_id))
    fault_matrix.record_bad(len(bad), len({d["origin"] for d in dead if d["origin"] in bad and d["reason"]}))
    assert_exact(env, st_, expected, rejected=len(bad))
    fault_matrix.record_run(exact=True)
    assert sorted(d["origin"] for d in dead) == sorted(bad)  # each bad line once, with its file:line
    for d in dead:
        assert d["message"] and d["reason"]
        if d["error_type"] == OVERSIZED_RECORD:
            assert d["ref"] and d["stage"] == "extract"
