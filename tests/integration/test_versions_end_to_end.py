"""Loads in the source's order, end to end (issue 23's reproduction): a file pipeline into ClickHouse (chdb) with a
primary key, through the four services (a Stack over the test's nats-server). Three incremental runs, the third
updating rows of the first and deleting one; then a replay of the first run, without --diff. The replayed rows
carry the first run's versions, so the newer values stay. `jetl query` reads the table while the stack runs (the
loader owns the chdb folder), current rows by default, every stored row with --all.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from jetl.cli import app
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = """
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, Pipeline

class Item(BaseModel):
    id: int
    note: str
    deleted: bool = False

def register_pipelines():
    return [
        Pipeline(name="items", extractors=[FileExtractor("SOURCE/*.jsonl")], loader=ClickHouseLoader("items"),
                 schema=Item, primary_key=["id"], deletes="deleted", batch_size=7),
    ]
"""


def cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, list(args))
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.exit_code, result.stdout + result.stderr


def run(settings: JetlSettings, replay_of: str | None = None) -> RunState:
    async def go() -> RunState:
        async with JetlClient(settings) as jc:
            if replay_of is not None:
                return await jc.replay("items", replay_of, timeout=120)
            req = await jc.request_run("items")
            return await jc.wait("items", req.run_id, timeout=120)

    state = asyncio.run(go())
    assert state.status == "completed", state.error
    return state


def put(folder: Path, name: str, rows: list[dict[str, Any]]) -> None:
    (folder / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_a_replay_of_the_first_run_leaves_the_newer_values_and_query_reads_them_while_the_stack_runs(
    tmp_path: Path, nats: NatsHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, pipelines, data = tmp_path / "source", tmp_path / "pipelines", tmp_path / "data"
    source.mkdir()
    pipelines.mkdir()
    (pipelines / "items_pipeline.py").write_text(PIPELINE.replace("SOURCE", str(source)))
    for k, v in {"JETL_NATS__URL": nats.url, "JETL_PIPELINES_DIR": str(pipelines), "JETL_DATA_DIR": str(data)}.items():
        monkeypatch.setenv(k, v)
    settings = JetlSettings(nats=NatsSettings(url=nats.url))

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        put(source, "1.jsonl", [{"id": i, "note": f"first-{i}"} for i in range(20)])
        first = run(settings)
        put(source, "2.jsonl", [{"id": i, "note": f"second-{i}"} for i in range(20, 30)])
        assert run(settings).extracted == 10
        # the third run updates ids 0..11 of the first and deletes id 19
        put(
            source,
            "3.jsonl",
            [{"id": i, "note": f"third-{i}"} for i in range(12)] + [{"id": 19, "note": "", "deleted": True}],
        )
        assert run(settings).extracted == 13
        replay = run(settings, replay_of=first.run_id)  # the first run's raw batches, through the loader again
        assert replay.extracted == 20

        code, out = cli("query", "items", "SELECT id, note FROM items ORDER BY id", "--max-rows", "100", "--json")
        assert code == 0, out
        notes = {int(i): n for i, n in out["rows"]}
        expected = {i: f"third-{i}" for i in range(12)} | {i: f"first-{i}" for i in range(12, 19)}
        expected |= {i: f"second-{i}" for i in range(20, 30)}
        assert notes == expected  # the replay did not revert the third run's rows; the delete holds

        code, out = cli("query", "items", "SELECT count() FROM items", "--json")
        assert code == 0 and out["rows"] == [[29]], out  # one row per key, now: no waiting for merges
        code, out = cli("query", "items", "SELECT count() FROM items", "--all", "--json")
        assert code == 0 and out["rows"][0][0] >= 29, out  # every stored row (older versions until merged away)
        code, out = cli("query", "items", "SELECT id FROM items ORDER BY id", "--max-rows", "5", "--json")
        assert code == 0 and len(out["rows"]) == 5 and out["truncated"], out
        code, out = cli("query", "items", "DROP TABLE items")
        assert code == 1 and "SELECT" in str(out), out  # read-only: the table is still there
        code, out = cli("query", "items", "SELECT count() FROM items; DROP TABLE items")
        assert code == 1, out
        code, out = cli("counts", "items", "--json")
        assert code in (0, 1) and out["distinct_keys"] == 29, out
        stack.check()
