"""Pipelines do not wait behind each other: a small run requested while another pipeline's big run is in flight
completes before the big one does, since each pipeline has its own transformer and loader durables and the
services pull from them in turn (`jetl.subjects.PER_PIPELINE`). With one durable per stage for every pipeline, in
stream order, the small run's batch waited behind every batch the big run had put on the stream before it.

Event-driven: the small run is requested once the big one has loaded its first batch, and the big run's state is
read the moment the small one completes (how long each took is for bench/control_plane.py fairness).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.subjects import stage_durable
from jetl.testing.cli import jetl
from jetl.testing.servers import NatsHandle
from jetl.testing.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIG, SMALL = 20_000, 100

PIPELINE = """
from pydantic import BaseModel
from jetl import FileExtractor, FileLoader, LambdaTransformer, Pipeline

class Row(BaseModel):
    id: int

def work(r):  # some work per record, so that the big run is still loading when the small one is asked for
    sum(range(200))
    return r

def register_pipelines():
    return [
        Pipeline(name="big", extractors=[FileExtractor("INPUT/big.jsonl")], transformers=[LambdaTransformer(work)],
                 loader=FileLoader("OUTPUT"), schema=Row, batch_size=50),
        Pipeline(name="small", extractors=[FileExtractor("INPUT/small.jsonl")], loader=FileLoader("OUTPUT"),
                 schema=Row, batch_size=50),
    ]
"""


def test_a_small_run_completes_while_another_pipelines_big_run_is_still_loading(
    tmp_path: Path, nats: NatsHandle
) -> None:
    inputs, output, pipelines = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines"
    for folder in (inputs, pipelines):
        folder.mkdir()
    for name, n in (("big", BIG), ("small", SMALL)):
        (inputs / f"{name}.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    (pipelines / "two_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(output)))

    async def scenario() -> tuple[RunState, RunState | None, RunState]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            big = await jc.request_run("big")
            loading = asyncio.Event()

            def seen(_: object, st: RunState) -> None:
                if st.loaded:
                    loading.set()

            big_done = asyncio.create_task(jc.wait("big", big.run_id, timeout=600, on_event=seen))
            await asyncio.wait({asyncio.create_task(loading.wait()), big_done}, return_when=asyncio.FIRST_COMPLETED)
            small = await jc.request_run("small")
            small_state = await jc.wait("small", small.run_id, timeout=600)
            big_then = await jc.run_state("big", big.run_id)  # the moment the small run completed
            return small_state, big_then, await big_done

    with Stack(data_dir=tmp_path / "data", pipelines_dir=pipelines, nats_url=nats.url) as stack:
        small_state, big_then, big_state = asyncio.run(scenario())
        stack.check()

    assert small_state.status == "completed" and small_state.loaded == SMALL
    assert big_then is not None and big_then.status == "running", big_then
    assert big_then.loaded < BIG
    assert big_state.status == "completed" and big_state.loaded == BIG


LATER = """
from pydantic import BaseModel
from jetl import FileExtractor, FileLoader, Pipeline

class Row(BaseModel):
    id: int

def register_pipelines():
    return [Pipeline(name="later", extractors=[FileExtractor("INPUT/small.jsonl")], loader=FileLoader("OUTPUT"),
                     schema=Row, batch_size=50)]
"""


def test_a_pipeline_added_while_the_services_run_is_named_in_health_until_deployed_then_runs(
    tmp_path: Path, nats: NatsHandle
) -> None:
    """Services may not create consumers: a pipeline whose durables no deploy declared yet waits (nothing crashes),
    `jetl health` names what is missing and what to do, and after `jetl deploy` its runs go through."""
    inputs, output, pipelines = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines"
    for folder in (inputs, pipelines):
        folder.mkdir()
    (inputs / "small.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(SMALL)))

    def missing() -> list[dict[str, str]]:
        checks = jetl("health", "--json", nats_url=nats.url, pipelines_dir=pipelines).json()["checks"]
        return [c for c in checks if c["check"] == "consumer" and c["status"] == "fail" and "later" in c["name"]]

    def both(rows: list[dict[str, str]]) -> list[dict[str, str]] | None:
        return rows if len(rows) == 2 else None  # the transformer's and the loader's

    async def run_later() -> RunState:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            req = await jc.request_run("later")
            return await jc.wait("later", req.run_id, timeout=300)

    with Stack(data_dir=tmp_path / "data", pipelines_dir=pipelines, nats_url=nats.url) as stack:
        later = LATER.replace("INPUT", str(inputs)).replace("OUTPUT", str(output))
        (pipelines / "later_pipeline.py").write_text(later)  # the services load it; no deploy has run since
        rows = wait_for("health to name the new pipeline's missing consumers", lambda: both(missing()))
        assert {r["name"] for r in rows} == {
            f"JETL_RAW/{stage_durable('transformer', 'later')}",
            f"JETL_CLEAN/{stage_durable('loader', 'later')}",
        }
        assert all("run `jetl deploy`" in r["detail"] for r in rows), rows
        stack.check()  # no service died of it
        assert jetl("deploy", "--no-migrate", nats_url=nats.url, pipelines_dir=pipelines).code == 0
        state = asyncio.run(run_later())
        stack.check()
    assert state.status == "completed" and state.loaded == SMALL
    wait_for("health to find nothing missing", lambda: not missing())
