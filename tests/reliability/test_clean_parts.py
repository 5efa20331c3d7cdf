"""A transformer that grows its records past a message: the clean batch travels in parts, and the destination gets
exactly the rows, once each, with the ledger counting every part (a real nats-server with a 1 MB max_payload, the
four services as processes, ClickHouse through chdb).

Two pipelines: one whose clean batches travel as Arrow IPC (cut by record-batch slices), one whose schema has a
constraint so they travel as JSON (cut by records), with one record that grows past any message: it alone is
dead-lettered, by reference, and the rest of its batch loads.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from jetl.messages.deadletter import OVERSIZED_RECORD
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb
from jetl.testing.servers import NatsServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_PAYLOAD = 1024 * 1024
PAD = 5000
"""Bytes each record grows by: 500 records of ~30 bytes (one raw batch of 15 kB) become ~2.5 MB clean."""
HUGE_ID = 777
"""In the JSON pipeline, the record that grows past any message (1.5 MB)."""

PIPELINE = """
from pydantic import BaseModel, Field
from jetl import ClickHouseLoader, FileExtractor, LambdaTransformer, Pipeline

class Grown(BaseModel):
    id: int
    name: str
    pad: str

class GrownChecked(BaseModel):
    id: int
    name: str
    pad: str = Field(min_length=1)  # a constraint: clean batches travel as JSON, validated in full by the loader

def grow(r):
    return {**r, "pad": "x" * PAD}

def grow_one_huge(r):
    return {**r, "pad": "x" * (1536 * 1024 if r["id"] == HUGE_ID else PAD)}

def register_pipelines():
    return [
        Pipeline(name="grow_arrow", extractors=[FileExtractor("IN/arrow/*.jsonl")],
                 transformers=[LambdaTransformer(grow)], loader=ClickHouseLoader("grow_arrow", order_by=["id"]),
                 schema=Grown, batch_size=500),
        Pipeline(name="grow_json", extractors=[FileExtractor("IN/json/*.jsonl")],
                 transformers=[LambdaTransformer(grow_one_huge)],
                 loader=ClickHouseLoader("grow_json", order_by=["id"]),
                 schema=GrownChecked, batch_size=500),
    ]
"""


def test_a_clean_batch_over_max_payload_travels_in_parts_and_loads_exactly(tmp_path: Path) -> None:
    inputs, pipelines, data = tmp_path / "in", tmp_path / "pipelines", tmp_path / "data"
    for sub in ("arrow", "json"):
        (inputs / sub).mkdir(parents=True)
    pipelines.mkdir()
    code = PIPELINE.replace("IN/", f"{inputs}/").replace("HUGE_ID", str(HUGE_ID)).replace("PAD", str(PAD))
    (pipelines / "grow_pipeline.py").write_text(code)
    ids = list(range(1, 1501))  # 3 raw batches of 500 records, each ~2.5 MB once grown
    for sub in ("arrow", "json"):
        (inputs / sub / "in.jsonl").write_text("".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in ids))

    server = NatsServer(tmp_path / "nats", max_payload_mb=MAX_PAYLOAD // (1024 * 1024)).start()
    settings = JetlSettings(nats=NatsSettings(url=server.url))

    async def run(pipeline: str) -> tuple[RunState, list[dict[str, Any]]]:
        async with JetlClient(settings) as jc:
            req = await jc.request_run(pipeline)
            st = await jc.wait(pipeline, req.run_id, timeout=180)
            letters = await jc.dead_letter_log(pipeline)
        dead = [
            {"stage": dl.stage, "error_type": dl.error_type, "reason": dl.reason, **rec}
            for _, dl in letters
            if dl.run_id == st.run_id
            for rec in dl.records or [{}]
        ]
        return st, dead

    try:
        with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=server.url) as stack:
            arrow, arrow_dead = asyncio.run(run("grow_arrow"))
            checked, json_dead = asyncio.run(run("grow_json"))
            stack.check()
    finally:
        server.stop()

    # Arrow: every record loads, nothing is dead-lettered, and the batches went in parts
    assert arrow.status == "completed", arrow.error
    assert (arrow.extracted, arrow.loaded, arrow.rejected, arrow.filtered) == (1500, 1500, 0, 0)
    assert arrow.reconciles
    assert arrow_dead == []
    parts = sorted(b.parts for b in arrow.batches.values())
    assert len(parts) == 3 and all(p >= 3 for p in parts), parts  # ~2.5 MB clean per 500 records, 1 MB messages
    assert all(
        b.outcome == "loaded" and sum(c[0] for c in (b.part_counts or {}).values()) == b.loaded
        for b in arrow.batches.values()
    )
    rows = chdb.query(data / "chdb", "SELECT id, length(pad) AS n FROM grow_arrow ORDER BY id")
    assert [r["id"] for r in rows] == ids  # exactly once each: no part lost, none written twice
    assert {r["n"] for r in rows} == {PAD}

    # JSON: the one record too large for any message is dead-lettered alone, by reference; the rest loads
    assert checked.status == "completed", checked.error
    assert (checked.extracted, checked.loaded, checked.rejected, checked.filtered) == (1500, 1499, 1, 0)
    assert checked.reconciles
    [d] = json_dead
    assert d["stage"] == "transform" and d["error_type"] == OVERSIZED_RECORD and d["ref"]
    assert d["origin"] == f"{inputs / 'json' / 'in.jsonl'}:{HUGE_ID}"
    assert "grow_json" in d["reason"] and f"{checked.run_id}/" in d["reason"] and "exceeds the largest" in d["reason"]
    assert any(b.parts > 1 for b in checked.batches.values())
    rows = chdb.query(data / "chdb", "SELECT id FROM grow_json ORDER BY id")
    assert [r["id"] for r in rows] == [i for i in ids if i != HUGE_ID]
