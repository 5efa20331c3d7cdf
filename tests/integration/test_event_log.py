"""The event log end to end, four services as processes over a real nats-server, driven through the `jetl` CLI:
incremental runs (the cursor advances only on completion), status and audit folded from the log, a rebuild of the
folded state, a backfill that loads once however often it runs, a replay after a transformer change whose --diff
reports exactly the changed rows, and dead letters redriven after a fix with a ledger that keeps reconciling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jetl import subjects
from jetl.archive import Archive
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.subjects import Kind, stream_name
from jetl.testing import chdb
from jetl.testing.cli import CliResult, jetl
from jetl.testing.pipelines import file_pipeline
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Env:
    """A stack over the test's NATS, with the CLI and client pointed at it."""

    def __init__(self, tmp: Path, nats: NatsHandle) -> None:
        self.tmp, self.url = tmp, nats.url
        self.pipelines, self.data, self.inputs, self.out = (tmp / n for n in ("pipelines", "data", "in", "out"))
        for d in (self.pipelines, self.inputs):
            d.mkdir()
        self.stack: Stack | None = None

    def pipeline(self, name: str, code: str) -> None:
        text = code.replace("INPUT", str(self.inputs)).replace("OUTPUT", str(self.out))
        (self.pipelines / f"{name}_pipeline.py").write_text(text)

    def start(self) -> Stack:
        self.stack = Stack(data_dir=self.data, pipelines_dir=self.pipelines, nats_url=self.url).start()
        return self.stack

    def cli(self, *args: str, ok: bool = True) -> CliResult:
        result = jetl(*args, nats_url=self.url, pipelines_dir=self.pipelines, data_dir=self.data)
        if ok:
            assert result.code == 0, f"jetl {' '.join(args)} exited {result.code}: {result.stdout}{result.stderr}"
        return result

    def corrupt_state(self, pipeline: str, *, lost: str, wrong: str) -> None:
        """Delete one run's folded state and overwrite another's with a wrong one."""

        async def go() -> None:
            from jetl.state import bucket, last_ok_key, run_key

            async with JetlClient(JetlSettings(nats=NatsSettings(url=self.url))) as jc:
                kv = await bucket(jc.conn)
                await kv.delete(last_ok_key(pipeline))  # and the latest success `jetl health` reads
                await kv.delete(run_key(pipeline, lost))
                bogus = RunState(pipeline=pipeline, run_id=wrong, status="failed", error="bogus")
                await kv.put(run_key(pipeline, wrong), bogus.model_dump_json().encode())

        asyncio.run(go())

    def latest_success(self, pipeline: str) -> str | None:
        """The run id of the pipeline's latest success, as the state bucket keeps it."""

        async def go() -> str | None:
            from jetl.state import bucket, get_mark, last_ok_key

            async with JetlClient(JetlSettings(nats=NatsSettings(url=self.url))) as jc:
                mark = await get_mark(await bucket(jc.conn), last_ok_key(pipeline))
                return mark.run_id if mark is not None else None

        return asyncio.run(go())

    def purge_raw(self, pipeline: str, run_id: str, keep: int) -> None:
        """Drop a run's raw batches from JETL_RAW and from the archive but the last `keep`."""

        async def go() -> None:
            async with JetlClient(JetlSettings(nats=NatsSettings(url=self.url))) as jc:
                js = jc.conn.jetstream()
                await js.purge_stream(stream_name(Kind.RAW), subject=subjects.raw(pipeline, run_id), keep=keep)

        asyncio.run(go())
        archive = Archive(str(self.data / "archive"))
        for part_id in archive.batches(pipeline, run_id)[:-keep]:
            Path(archive.path(pipeline, run_id, part_id)).unlink()

    def run(self, pipeline: str) -> RunState:
        async def go() -> RunState:
            async with JetlClient(JetlSettings(nats=NatsSettings(url=self.url))) as jc:
                req = await jc.request_run(pipeline)
                return await jc.wait(pipeline, req.run_id, timeout=120)

        state = asyncio.run(go())
        assert self.stack is not None
        self.stack.check()
        return state


@pytest.fixture
def env(tmp_path: Path, nats: NatsHandle) -> Iterator[Env]:
    e = Env(tmp_path, nats)
    yield e
    if e.stack is not None:
        e.stack.stop()


def jsonl(path: Path, ids: range, **extra: Any) -> None:
    path.write_text("".join(json.dumps({"id": i, "name": f"n{i}", **extra}) + "\n" for i in ids))


FILES = file_pipeline("files", batch_size=40)


def test_incremental_runs_with_status_audit_counts_and_rebuild(env: Env) -> None:
    env.pipeline("files", FILES)
    jsonl(env.inputs / "a.jsonl", range(300))
    env.start()

    first = env.run("files")
    again = env.run("files")  # requested the moment the first completed: the cursor must already be there
    jsonl(env.inputs / "b.jsonl", range(300, 420))
    third = env.run("files")
    assert (first.status, first.loaded) == ("completed", 300)
    assert (again.status, again.extracted, again.loaded) == ("completed", 0, 0)  # nothing new, nothing loaded
    assert (third.status, third.extracted, third.loaded) == ("completed", 120, 120)  # only the new file
    ids = [json.loads(line)["id"] for p in sorted(env.out.rglob("*.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(ids) == list(range(420))

    runs = env.cli("status", "files", "--json").json()
    assert [r["run_id"] for r in runs] == [third.run_id, again.run_id, first.run_id]  # newest first
    assert all(r["status"] == "completed" and r["reconciles"] for r in runs)

    audit = env.cli("audit", first.run_id, "--json").json()
    assert audit["run"]["loaded"] == 300 and len(audit["batches"]) == 8  # 300 records in batches of 40
    steps = [s for b in audit["batches"] for stage in ("extracted", "transformed", "loaded") for s in b[stage]]
    assert {s["service"] for s in steps} == {"extractor", "transformer", "loader"}
    assert all(s["instance"] and s["code_hash"] == audit["code_hashes"][0] for s in steps)
    assert [s["event"] for s in audit["steps"]] == ["run.requested", "run.started", "run.extracted", "run.completed"]

    counts = env.cli("counts", "files", "--json").json()
    assert counts["totals"]["in_destination"] == counts["totals"]["expected_in_destination"] == 420
    assert counts["verdict"] == {
        "reconciles": True,
        "unreconciled_runs": [],
        "destination_matches": True,
        "mismatched_runs": [],
        "stray_rows": {},
    }

    env.corrupt_state("files", lost=first.run_id, wrong=third.run_id)  # the folded state is only a projection
    broken = env.cli("status", "files", "--json").json()
    assert {r["run_id"]: r["status"] for r in broken} == {third.run_id: "failed", again.run_id: "completed"}
    rebuilt = env.cli("status", "files", "--rebuild", "--json").json()
    assert rebuilt == runs  # folded again from JETL_EVENTS: nothing else was ever the truth
    assert env.latest_success("files") == third.run_id  # and the keys derived from them


def test_a_run_that_would_overlap_an_unfinished_one_is_refused_and_nothing_loads_twice(env: Env) -> None:
    """Runs of a pipeline with a cursor (here: files already loaded) start from what the last completed run left; a
    second run requested while the first is still loading would read the same files, so the extractor refuses it,
    naming the run it would overlap."""
    slow = FILES.replace(
        "from jetl import FileExtractor, FileLoader, Pipeline",
        "import time\nfrom jetl import FileExtractor, FileLoader, LambdaTransformer, Pipeline",
    ).replace(
        "loader=FileLoader(",
        "transformers=[LambdaTransformer(lambda r: time.sleep(0.01) or r)], loader=FileLoader(",
    )
    assert "LambdaTransformer(lambda" in slow
    env.pipeline("files", slow)
    jsonl(env.inputs / "a.jsonl", range(200))  # 5 batches of 40, 0.4 s of transforming each
    env.start()

    async def overlap() -> tuple[RunState, RunState]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=env.url))) as jc:
            first = await jc.request_run("files")
            extracted = asyncio.Event()
            waiting = asyncio.create_task(
                jc.wait(
                    "files",
                    first.run_id,
                    timeout=120,
                    on_event=lambda ev, _: extracted.set() if ev.type == "run.extracted" else None,
                )
            )
            await asyncio.wait_for(extracted.wait(), 60)
            second = await jc.request_run("files")  # the first is still transforming and loading
            refused = await jc.wait("files", second.run_id, timeout=60)
            return await waiting, refused

    first, refused = asyncio.run(overlap())
    assert (first.status, first.loaded) == ("completed", 200)
    assert refused.status == "failed" and refused.loaded == 0
    assert "keeps a cursor" in (refused.error or "") and first.run_id in (refused.error or "")
    after = env.run("files")  # once the first has finished, the next run starts from its cursor
    assert (after.status, after.extracted) == ("completed", 0)
    ids = [json.loads(line)["id"] for p in env.out.rglob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted(ids) == list(range(200))  # each row once


HOURLY = """
from datetime import timedelta
from pydantic import BaseModel
from jetl import Chunk, Cron, FileLoader, Pipeline
from jetl.protocols import Check

class Reading(BaseModel):
    id: int
    hour: str

class EveryTenMinutes:
    '''One reading per ten minutes of the run's data interval: what a backfilled API extractor would fetch.'''

    async def extract(self, ctx):
        t = ctx.data_interval_start
        rows = []
        while t < ctx.data_interval_end:
            rows.append({"id": int(t.timestamp()) // 600, "hour": t.strftime("%H")})
            t += timedelta(minutes=10)
        yield Chunk(rows)

    def next_cursor(self):
        return None

    def check(self, settings):
        return Check("ok", "configured")

def register_pipelines():
    return [Pipeline(name="hourly", extractors=[EveryTenMinutes()], loader=FileLoader("OUTPUT"),
                     schema=Reading, schedule=Cron("0 * * * *", paused=True), batch_size=4)]
"""


def test_a_repeated_backfill_loads_once(env: Env) -> None:
    env.pipeline("hourly", HOURLY)
    env.start()

    plan = env.cli(
        "backfill", "hourly", "--start", "2026-11-01T00:00", "--end", "2026-11-01T06:00", "--dry-run", "--json"
    ).json()
    assert [p["run_id"] for p in plan] == [f"hourly-20261101T{h:02d}00Z" for h in range(6)]

    first = env.cli(
        "backfill", "hourly", "--start", "2026-11-01", "--end", "2026-11-01T06:00", "--max-parallel", "2", "--json"
    ).json()
    assert [(r["outcome"], r["loaded"]) for r in first] == [("completed", 6)] * 6
    again = env.cli("backfill", "hourly", "--start", "2026-11-01", "--end", "2026-11-01T06:00", "--json").json()
    assert [r["outcome"] for r in again] == ["skipped"] * 6
    wider = env.cli("backfill", "hourly", "--start", "2026-11-01T04:00", "--end", "2026-11-01T08:00", "--json").json()
    assert [r["outcome"] for r in wider] == ["skipped", "skipped", "completed", "completed"]

    rows = [json.loads(line) for p in env.out.rglob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 8 * 6  # eight hours, six readings each, each once
    assert sorted({r["hour"] for r in rows}) == [f"{h:02d}" for h in range(8)]
    states = {r["run_id"]: r for r in env.cli("status", "hourly", "--json").json()}
    assert all(s["trigger"] == "backfill" for s in states.values()) and len(states) == 8
    counts = env.cli("counts", "hourly", "--json").json()
    assert counts["totals"]["in_destination"] == 48 and counts["verdict"]["destination_matches"]


def test_a_failed_interval_is_retried_under_its_next_attempt_only_when_asked(env: Env) -> None:
    fixed = env.tmp / "source-fixed"
    failing = HOURLY.replace(
        "        rows = []\n",
        "        rows = []\n"
        "        from pathlib import Path\n"
        "        from jetl import ConfigError\n"
        f"        if t.hour == 3 and not Path({str(fixed)!r}).exists():\n"
        "            raise ConfigError('the source has nothing for 03:00 yet')\n",
    )
    assert failing != HOURLY
    env.pipeline("hourly", failing)
    env.start()
    window = ("--start", "2026-11-01", "--end", "2026-11-01T05:00")

    first = env.cli("backfill", "hourly", *window, "--json", ok=False)
    assert first.code == 1
    assert [(r["run_id"], r["outcome"]) for r in first.json()][2:4] == [
        ("hourly-20261101T0200Z", "completed"),
        ("hourly-20261101T0300Z", "failed"),
    ]
    again = env.cli("backfill", "hourly", *window, "--json", ok=False).json()
    assert [r["outcome"] for r in again] == ["skipped"] * 3 + ["failed earlier", "skipped"]
    retried = env.cli("backfill", "hourly", *window, "--retry-failed", "--json", ok=False).json()
    assert (retried[3]["run_id"], retried[3]["outcome"]) == ("hourly-20261101T0300Z-retry1", "failed")

    fixed.touch()
    retried = env.cli("backfill", "hourly", *window, "--retry-failed", "--json").json()
    assert [(r["slot_run_id"], r["outcome"]) for r in retried][3] == ("hourly-20261101T0300Z", "completed")
    assert retried[3]["run_id"] == "hourly-20261101T0300Z-retry2" and retried[3]["loaded"] == 6
    assert [r["outcome"] for r in retried] == ["skipped"] * 3 + ["completed", "skipped"]
    settled = env.cli("backfill", "hourly", *window, "--retry-failed", "--json").json()
    assert [r["outcome"] for r in settled] == ["skipped"] * 5  # the retry that completed stands for its interval
    rows = [json.loads(line) for p in env.out.rglob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 5 * 6


PRICES = """
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, LambdaTransformer, Pipeline

class Item(BaseModel):
    id: int
    name: str
    cents: int

def step(r):
    VERSION
    return r

def register_pipelines():
    return [Pipeline(name="prices", extractors=[FileExtractor("INPUT/*.jsonl")], transformers=[LambdaTransformer(step)],
                     loader=ClickHouseLoader("prices", order_by=["id"]), schema=Item, batch_size=50)]
"""
V1 = 'r["cents"] = r["price"] * 100\n    if r["id"] % 7 == 0:\n        return None'
V2 = 'r["cents"] = r["price"] * 100 + (1 if r["id"] % 10 == 0 else 0)\n    if r["id"] % 11 == 0:\n        return None'


def expected(version: int) -> dict[int, int]:
    """id -> cents, as each transformer version loads them (v1 drops id%7, v2 drops id%11 and bumps id%10)."""
    out = {}
    for i in range(1, 401):
        if (version == 1 and i % 7 == 0) or (version == 2 and i % 11 == 0):
            continue
        out[i] = i * 100 + (1 if version == 2 and i % 10 == 0 else 0)
    return out


def test_replay_after_a_transformer_change_diffs_exactly_the_changed_rows(env: Env) -> None:
    env.pipeline("prices", PRICES.replace("VERSION", V1))
    (env.inputs / "p.jsonl").write_text(
        "".join(json.dumps({"id": i, "name": f"n{i}", "price": i}) + "\n" for i in range(1, 401))
    )
    stack = env.start()
    parent = env.run("prices")
    assert parent.status == "completed" and parent.loaded == len(expected(1))

    env.pipeline("prices", PRICES.replace("VERSION", V2))  # the fix; the transformer restarts on the new code
    stack.procs["transformer"].stop()
    stack.procs["transformer"].start()

    v1, v2 = expected(1), expected(2)
    added, removed = sorted(v2.keys() - v1.keys()), sorted(v1.keys() - v2.keys())
    changed = sorted(k for k in v1.keys() & v2.keys() if v1[k] != v2[k])
    assert parent.requested_at is not None
    since = (parent.requested_at - timedelta(seconds=1)).isoformat()  # the runs requested since: just the parent
    [out] = env.cli("replay", "prices", "--since", since, "--diff", "--sample", "400", "--json").json()
    assert out["status"] == "completed" and out["parent_run_id"] == parent.run_id
    d = out["diff"]
    assert (d["added"], d["removed"], d["changed"]) == (len(added), len(removed), len(changed))
    assert d["unchanged"] == len(v1.keys() & v2.keys()) - len(changed)
    assert {k: sorted(v) for k, v in d["samples"].items()} == {"added": added, "removed": removed, "changed": changed}
    trial = env.cli("counts", "prices", "--json").json()  # the real table is untouched by the --diff
    by_run = {r["run_id"]: r["in_destination"] for r in trial["runs"]}
    assert by_run == {parent.run_id: len(v1), out["run_id"]: 0} and trial["verdict"]["destination_matches"]

    real = env.cli("replay", "prices", "--run", parent.run_id, "--json").json()  # now for real
    assert real["status"] == "completed"

    env.purge_raw("prices", real["run_id"], keep=2)  # as if its older raw batches had been lost from the archive
    gone = env.cli("replay", "prices", "--run", real["run_id"], "--json", ok=False)
    assert gone.code == 1 and "keeps 2 of its 8 raw batches" in gone.json()["error"]  # refused, nothing resent
    stack.stop()  # chdb opens in one process at a time: read it once the loader is down
    rows = chdb.query(env.data / "chdb", "SELECT id, cents, _jetl_batch_id AS b FROM prices ORDER BY id")
    assert {r["id"]: r["cents"] for r in rows} == v2  # exactly the new code's output: no parent rows left
    assert len(rows) == len(v2) and all(r["b"].startswith(real["run_id"] + "/") for r in rows)
    tables = chdb.query(env.data / "chdb", "SELECT name FROM system.tables WHERE name LIKE 'prices%'")
    assert [t["name"] for t in tables] == ["prices"]  # the --diff shadow is gone


ORDERS = """
from pathlib import Path
from pydantic import BaseModel, Field
from jetl import FileExtractor, FileLoader, Pipeline, TerminalError, TypeTransformer

class RawOrder(BaseModel):
    id: int
    amount: float = Field(ge=LIMIT)

class Order(BaseModel):
    id: int
    amount: float

class Picky(FileLoader):
    # A destination that refuses whole batches holding a round id, until the ops fix (a flag file) is in.

    def load(self, records, ctx):
        if any(r["id"] % 50 == 0 for r in records) and not Path("FIXED").exists():
            raise TerminalError("the destination refuses round ids")
        return super().load(records, ctx)

def register_pipelines():
    return [Pipeline(name="orders", extractors=[FileExtractor("INPUT/*.jsonl")],
                     transformers=[TypeTransformer(RawOrder)], loader=Picky("OUTPUT"), schema=Order, batch_size=25)]
"""


def test_dead_letters_are_listed_redriven_once_and_the_ledger_reconciles(env: Env) -> None:
    fixed = env.tmp / "fixed"
    env.pipeline("orders", ORDERS.replace("LIMIT", "0").replace("FIXED", str(fixed)))
    lines = [json.dumps({"id": i, "amount": -i if i % 9 == 0 else i}) for i in range(1, 101)]
    lines.insert(40, '{"id": 999, "amount": ')  # unreadable: dead-lettered by the transformer, cannot be redriven
    (env.inputs / "o.jsonl").write_text("\n".join(lines) + "\n")
    negative = [i for i in range(1, 101) if i % 9 == 0]  # rejected by the transformer (amount >= 0)
    # The extractor batches lines (25 a batch, the unreadable one too); the destination refuses the batches that
    # hold id 50 (lines 51-75: ids 50-74) and id 100 (line 101)
    refused = [i for i in (*range(50, 75), 100) if i not in negative]
    stack = env.start()

    run = env.run("orders")
    assert (run.extracted, run.loaded) == (101, 100 - len(negative) - len(refused))
    assert run.rejected == len(negative) + 1 + len(refused) and run.reconciles
    dead = env.cli("dlq", "list", "orders", "--json").json()
    invalid = [r for r in dead if r["stage"] == "transform" and r["status"] != "unreadable"]
    assert sorted(r["origin"] for r in invalid) == sorted(
        f"{env.inputs / 'o.jsonl'}:{i if i <= 40 else i + 1}" for i in negative
    )
    assert {r["field"] for r in invalid} == {"amount"}
    # each record carries its own reason, not the first record's ("... (+n more)" is the letter's, not a record's)
    assert all(r["origin"] in r["reason"] and "more)" not in r["reason"] for r in invalid)
    unreadable = [r for r in dead if r["status"] == "unreadable"]
    assert [(r["stage"], r["origin"], r["field"]) for r in unreadable] == [
        ("transform", f"{env.inputs / 'o.jsonl'}:41", None)
    ]
    assert unreadable[0]["record"] == '{"id": 999, "amount":' and "malformed JSON" in unreadable[0]["message"]
    assert sorted(r["record"]["id"] for r in dead if r["stage"] == "load") == refused
    assert all("refuses round ids" in r["message"] for r in dead if r["stage"] == "load")

    env.pipeline("orders", ORDERS.replace("LIMIT", "-1000").replace("FIXED", str(fixed)))  # negatives are refunds
    fixed.touch()  # and the destination takes round ids now
    stack.procs["transformer"].stop()
    stack.procs["transformer"].start()
    redrive = env.cli("dlq", "redrive", "orders", "--json").json()
    assert redrive["status"] == "completed" and redrive["trigger"] == "redrive"
    assert redrive["extracted"] == redrive["loaded"] == len(negative) + len(refused) and redrive["rejected"] == 0
    assert env.cli("dlq", "redrive", "orders", "--json").json() is None  # nothing is sent twice

    listed = env.cli("dlq", "list", "orders", "--json").json()
    assert {r["redriven_by"] for r in listed if r["status"] != "unreadable"} == {redrive["run_id"]}
    counts = env.cli("counts", "orders", "--json").json()
    assert counts["verdict"]["reconciles"] and counts["verdict"]["destination_matches"]
    assert counts["totals"]["in_destination"] == 100
    ids = [json.loads(line)["id"] for p in env.out.rglob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted(ids) == list(range(1, 101))  # every good record once, the refunds and the refused included
