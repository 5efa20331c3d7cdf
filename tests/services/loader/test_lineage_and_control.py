"""The loader stage in memory: a replayed batch replaces its parent's part, a shadow batch stays out of the real
destination, and the control verbs (count, diff) answer over request/reply."""

from __future__ import annotations

from pathlib import Path

import orjson
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from jetl import ConsoleLoader, FileExtractor, FileLoader, Pipeline, subjects
from jetl.events import BatchLoaded, RunRequested
from jetl.messages.models import Batch
from jetl.messages.wire import encode_batch
from jetl.registry import register
from jetl.runtime.service import bind_in_memory, make_context
from jetl.settings import JetlSettings
from jetl.state import apply
from jetl.testing.memory import MemoryKV
from jetl_loader.handlers import make_router


async def seed_runs(kv: MemoryKV, pipeline: str) -> None:
    """Run r1 (two batches), its shadow replay r1-rp, and its replay r2: what the tracker would have folded."""
    for ev in (
        RunRequested(pipeline=pipeline, run_id="r1"),
        BatchLoaded(pipeline=pipeline, run_id="r1", batch_id="r1/000000", seq=0, records=2),
        BatchLoaded(pipeline=pipeline, run_id="r1", batch_id="r1/000001", seq=1, records=1),
        RunRequested(pipeline=pipeline, run_id="r1-rp", trigger="replay", parent_run_id="r1", shadow=True),
        BatchLoaded(pipeline=pipeline, run_id="r1-rp", batch_id="r1-rp/000000", seq=0, records=2),
        RunRequested(pipeline=pipeline, run_id="r2", trigger="replay", parent_run_id="r1"),
    ):
        await apply(kv, ev)  # type: ignore[arg-type]


class Row(BaseModel):
    id: int
    name: str


def batch(p: Pipeline, run: str, seq: int, n: int, **kw: object) -> Batch:
    return Batch(pipeline=p.name, run_id=run, seq=seq, schema_name="Row", schema_hash=p.schema_hash, count=n, **kw)  # type: ignore[arg-type]


async def test_replay_supersedes_shadow_stays_aside_and_control_answers(tmp_path: Path) -> None:
    out = FileLoader(tmp_path / "out")
    p = Pipeline(name="ld", extractors=[FileExtractor(tmp_path / "*.jsonl")], loader=out, schema=Row)
    c = Pipeline(name="cons", extractors=[FileExtractor(tmp_path / "*.jsonl")], loader=ConsoleLoader(), schema=Row)
    register([p, c])
    ctx = make_context("loader", JetlSettings())
    ctx.kv = kv = MemoryKV()  # type: ignore[assignment]
    await seed_runs(kv, "ld")
    ctx.broker.include_router(make_router(ctx))
    bind_in_memory(ctx)  # its per-pipeline consumers, on the in-memory broker
    rows = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    async with TestNatsBroker(ctx.broker) as br:

        async def clean(b: Batch, records: list[dict[str, object]]) -> None:
            await br.publish(encode_batch(b, records), subjects.clean(b.pipeline, b.run_id), stream="JETL_CLEAN")

        async def ask(verb: str, **body: object) -> dict[str, object]:
            reply = await br.request(orjson.dumps(body), subjects.control("loader", verb))
            return orjson.loads(reply.body)  # type: ignore[no-any-return]

        await clean(batch(p, "r1", 0, 2), rows)
        await clean(batch(p, "r1", 1, 1), rows[:1])
        await clean(batch(p, "r1-rp", 0, 2, shadow=True, supersedes="r1/000000"), [{"id": 1, "name": "A"}, rows[1]])
        assert out.rows_by_run("ld") == {"r1": 3}  # the shadow batch is not in the real destination

        assert (await ask("shadows", pipeline="ld", run_ids=["r1-rp", "r1"]))["result"] == {"live": ["r1-rp"]}
        got = await ask("diff", pipeline="ld", run_id="r1-rp", parent_run_id="r1")
        assert got["ok"] is True
        d = got["result"]
        assert (d["added"], d["removed"], d["unchanged"]) == (1, 2, 1)  # type: ignore[index]
        assert not (tmp_path / "out" / ".shadow" / "r1-rp").exists()  # dropped after the diff
        # asked again (the dashboard, after `jetl replay --diff`): refused, not every parent row counted as removed
        assert (await ask("shadows", pipeline="ld", run_ids=["r1-rp"]))["result"] == {"live": []}
        again = await ask("diff", pipeline="ld", run_id="r1-rp", parent_run_id="r1")
        assert again["ok"] is False and "the shadow of replay 'r1-rp' is gone" in str(again["error"])

        for _ in range(2):  # a redelivered replay batch: same result
            await clean(batch(p, "r2", 0, 2, supersedes="r1/000000"), [{"id": 1, "name": "A"}, rows[1]])
        assert out.rows_by_run("ld") == {"r1": 1, "r2": 2}

        assert (await ask("count", pipeline="ld"))["result"] == {
            "destination": out.describe(),
            "total": 3,
            "by_run": {"r1": 1, "r2": 2},
            "exact": True,
            "key": [],
            "keys": None,
            "current": 3,  # the rows the destination means now (append: every row)
        }
        assert (await ask("count", pipeline="cons"))["result"]["total"] is None  # type: ignore[index]
        missing = await ask("count", pipeline="nope")
        assert missing["ok"] is False and missing["disposition"] == "terminal" and "nope" in str(missing["error"])

        recent = (await ask("rows", pipeline="ld", limit=2))["result"]  # the dashboard's rows view
        assert len(recent["rows"]) == 2 and "_jetl_version" in recent["columns"]  # type: ignore[index]
        refused = await ask("query", pipeline="ld", sql="SELECT 1")  # files answer no SQL: a terminal answer
        assert refused["ok"] is False and refused["disposition"] == "terminal" and "SQL" in str(refused["error"])
        too_many = await ask("rows", pipeline="ld", limit=100_000)  # the caps are the request model's
        assert too_many["ok"] is False and "limit" in str(too_many["error"])


async def test_an_envelope_that_does_not_match_its_subject_is_not_loaded(tmp_path: Path) -> None:
    out = FileLoader(tmp_path / "out")
    p = Pipeline(name="ld", extractors=[FileExtractor(tmp_path / "*.jsonl")], loader=out, schema=Row)
    register([p])
    ctx = make_context("loader", JetlSettings())
    ctx.broker.include_router(make_router(ctx))
    bind_in_memory(ctx)  # its per-pipeline consumers, on the in-memory broker
    async with TestNatsBroker(ctx.broker) as br:
        body = encode_batch(batch(p, "r9", 0, 1), [{"id": 1, "name": "a"}])
        await br.publish(body, subjects.clean("ld", "r8"), stream="JETL_CLEAN")  # the run of another subject
        assert out.rows_by_run("ld") == {}
        await br.publish(body, subjects.clean("ld", "r9"), stream="JETL_CLEAN")
        assert out.rows_by_run("ld") == {"r9": 1}


def test_the_destination_check_names_only_what_it_reached(tmp_path: Path) -> None:
    """`jetl health`'s destination row: a folder the loader probed is "reachable"; a console it cannot probe is
    said to be not probed, never "reachable"."""
    from types import SimpleNamespace

    from jetl_loader.app import check_destinations

    files, source = FileLoader(tmp_path / "out"), [FileExtractor(str(tmp_path))]
    ctx = SimpleNamespace(
        pipelines={
            "to_files": Pipeline(name="to_files", extractors=source, loader=files, schema=Row),
            "to_console": Pipeline(name="to_console", extractors=source, loader=ConsoleLoader(), schema=Row),
        },
        settings=JetlSettings(),
    )
    assert check_destinations(ctx) == f"reachable: {files.describe()}; not probed: console"  # type: ignore[arg-type]
