"""The example pipelines import without their input present, and a run through them in-process gives their output."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from jetl import ConsoleLoader, ExtractContext, LoadContext, Pipeline
from jetl.errors import RecordError, TransientError
from jetl.messages.ids import batch_id
from jetl.registry import load_module

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def load(name: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    monkeypatch.setenv("JETL_DATA_DIR", str(data_dir))
    (pipeline,) = load_module(PIPELINES / f"{name}_pipeline.py")
    return pipeline


def run_once(pipeline: Pipeline) -> tuple[int, int]:
    """Extract, transform and load every chunk the way the three stages do; (records loaded, records rejected)."""

    async def chunks() -> list[Any]:
        return [c for ex in pipeline.extractors async for c in ex.extract(ExtractContext(pipeline.name, "run1"))]

    loaded = rejected = 0
    for seq, chunk in enumerate(asyncio.run(chunks())):
        records, rejected = chunk.records, rejected + len(chunk.rejected)
        for t in pipeline.transformers:
            try:
                records = t.transform(records)
            except RecordError as exc:
                rejected += len(exc.issues)
                records = list(exc.survivors or [])
        clean = [
            m.model_dump()
            for m in pipeline.adapter.validate_json(
                pipeline.adapter.dump_json(pipeline.adapter.validate_python(records))
            )
        ]
        ctx = LoadContext(pipeline.name, "run1", batch_id("run1", seq), schema=pipeline.schema)
        loaded += pipeline.loader.load(clean, ctx)
    return loaded, rejected


@pytest.mark.parametrize("name", ["sensor_readings", "events_preview"])
def test_imports_with_nothing_on_disk(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = load(name, tmp_path / "data", monkeypatch)
    assert pipeline.name == name
    assert not (tmp_path / "data").exists()
    with pytest.raises(TransientError, match="no files match"):
        run_once(pipeline)


def test_sensor_readings_to_partitioned_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    pipeline = load("sensor_readings", data, monkeypatch)
    (data / "input" / "readings").mkdir(parents=True)
    csv_text = (
        "sensor_id,taken_at,temperature_c,humidity_pct,status\n"
        "s1,2026-11-25T23:59:00Z,21.50,40,ok\n"
        "s1,2026-11-26T00:01:00Z,21.70,,degraded\n"
        "s2,2026-11-26T00:01:00Z,19.00,55.5,calibrating\n"
        "s1,2026-11-26T00:01:00Z,21.80,41,ok\n"
        "s3,not a time,1,1,ok\n"
    )
    (data / "input" / "readings" / "gw1.csv.gz").write_bytes(gzip.compress(csv_text.encode()))
    assert run_once(pipeline) == (2, 1)
    table = ds.dataset(data / "output" / "sensor_readings", format="parquet", partitioning="hive").to_table()
    rows = sorted(table.to_pylist(), key=lambda r: r["taken_at"])
    assert [(r["day"], str(r["temperature_c"]), r["degraded"]) for r in rows] == [
        ("2026-11-25", "21.50", False),
        ("2026-11-26", "21.80", False),  # the resent row (keep="last") replaced the degraded one
    ]


def test_events_preview_prints_json_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    pipeline = load("events_preview", data, monkeypatch)
    assert isinstance(pipeline.loader, ConsoleLoader)
    (data / "input" / "events").mkdir(parents=True)
    events = [
        {"event": "view", "user_id": 1, "at": "2026-11-26T10:00:00Z", "properties": {"page": "/home"}},
        {"event": "healthcheck", "user_id": 0, "at": "2026-11-26T10:00:01Z"},
        {"event": "click", "user_id": 2, "at": "2026-11-26T10:00:02Z"},
    ]
    (data / "input" / "events" / "app.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert run_once(pipeline) == (2, 0)
    lines = [json.loads(line) for line in io.StringIO(capsys.readouterr().out)]
    assert [(e["event"], e["page"]) for e in lines] == [("view", "/home"), ("click", None)]
