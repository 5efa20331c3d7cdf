"""A pipeline file in, rows in ClickHouse (chdb) and part files out: four services as separate OS processes
over a real nats-server, with bad records in the input that must land in the DLQ with their reasons."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from jetl.ops.client import JetlClient
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = """
from datetime import datetime
from typing import Any
from pydantic import BaseModel, Field
from jetl import (ClickHouseLoader, ColumnTransformer, FileExtractor, FileLoader, LambdaTransformer, Pipeline,
                  TypeTransformer)

class Raw(BaseModel):
    id: int
    name: str
    price: float = Field(ge=0)
    at: datetime

class Item(BaseModel):
    id: int
    title: str
    price_cents: int
    at: datetime

def not_free(r: dict[str, Any]) -> dict[str, Any] | None:
    return None if r["price"] == 0 else r

def register_pipelines():
    steps = [TypeTransformer(Raw), LambdaTransformer(not_free),
             ColumnTransformer(rename={"name": "title"}, compute={"price_cents": lambda r: round(r["price"] * 100)},
                               drop=["price"])]
    return [
        Pipeline(name="items", extractors=[FileExtractor("INPUT/*.jsonl"), FileExtractor("INPUT/*.csv")],
                 transformers=steps, loader=ClickHouseLoader("items", order_by=["id"]), schema=Item, batch_size=50),
        Pipeline(name="items_files", extractors=[FileExtractor("INPUT/*.jsonl")], transformers=steps,
                 loader=FileLoader("OUTPUT"), schema=Item, batch_size=50),
    ]
"""


def write_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    lines = []
    for i in range(1, 201):
        rec = {"id": i, "name": f"item {i}", "price": (i % 10) * 1.5, "at": "2026-11-25T10:00:00+00:00"}
        if i == 17:
            rec["price"] = "cheap"  # type error
        if i == 33:
            del rec["name"]  # missing field
        lines.append(json.dumps(rec))
    lines.insert(50, '{"id": 999, "name": ')  # malformed JSON at line 51
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    rows = ["id,name,price,at"] + [f"{i},csv item {i},2.5,2026-11-25T11:00:00Z" for i in range(1001, 1051)]
    rows.append("1051,too,many,fields,here")  # wrong field count at line 52
    (folder / "more.csv").write_text("\n".join(rows) + "\n")


def test_four_processes_load_rows_and_dead_letter_bad_records(tmp_path: Path, nats: NatsHandle) -> None:
    inputs, output, pipelines, data = (
        tmp_path / "in",
        tmp_path / "out",
        tmp_path / "pipelines",
        tmp_path / "data",
    )
    write_inputs(inputs)
    pipelines.mkdir()
    (pipelines / "items_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(output)))

    async def run_both() -> tuple[object, object, list[object]]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            a = await jc.request_run("items")
            b = await jc.request_run("items_files")
            sa = await jc.wait("items", a.run_id, timeout=120)
            sb = await jc.wait("items_files", b.run_id, timeout=120)
            return sa, sb, await jc.dead_letters("items")

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        assert len({p.proc.pid for p in stack.procs.values() if p.proc}) == 4  # four OS processes
        state, files_state, dead = asyncio.run(run_both())
        stack.check()

    # 200 JSONL records + 1 malformed line, 50 CSV rows + 1 bad row
    assert state.status == "completed"
    assert state.extracted == 252
    assert state.rejected == 4  # malformed JSON, bad CSV row, type error, missing field
    free = sum(1 for i in range(1, 201) if i % 10 == 0 and i not in (17, 33))
    assert state.filtered == free
    assert state.loaded == 252 - 4 - free
    assert state.reconciles

    rows = chdb.query(data / "chdb", "SELECT count() AS n, sum(price_cents) AS s, min(id) AS lo FROM items")
    assert rows[0]["n"] == state.loaded
    expected_cents = sum(round((i % 10) * 1.5 * 100) for i in range(1, 201) if i not in (17, 33)) + 50 * 250
    assert int(rows[0]["s"]) == expected_cents

    reasons = [(r["origin"], r["field"], r["message"]) for dl in dead for r in dl.records]  # type: ignore[attr-defined]
    origins = {o for o, _, _ in reasons}
    assert f"{inputs / 'items.jsonl'}:51" in origins  # malformed line, named by file and line
    assert f"{inputs / 'more.csv'}:52" in origins
    assert any(f == "price" and o == f"{inputs / 'items.jsonl'}:17" for o, f, _ in reasons)
    assert any(f == "name" and o == f"{inputs / 'items.jsonl'}:33" for o, f, _ in reasons)
    assert len(reasons) == 4

    assert files_state.status == "completed"  # type: ignore[attr-defined]
    parts = sorted(output.glob("items_files/*/*.jsonl"))
    assert parts and not list(output.rglob(".*.tmp-*"))
    written = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    assert len(written) == files_state.loaded  # type: ignore[attr-defined]
    assert {"id", "title", "price_cents", "at", "_jetl_version"} == set(written[0])  # each row's place in the log
