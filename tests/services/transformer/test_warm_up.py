"""A transformer replica pays its one-time costs at start-up, not on the first batch it takes (with N replicas, each
one's first batch was a run's p99 latency)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PIPELINE = """
from datetime import datetime
from pydantic import BaseModel
from jetl import ClickHouseLoader, ColumnTransformer, FileExtractor, Pipeline, TypeTransformer

class Raw(BaseModel):
    id: int
    at: datetime
    name: str

class Row(BaseModel):
    id: int
    at: datetime
    title: str

def register_pipelines():
    return [
        Pipeline(name="flat", extractors=[FileExtractor("/nonexistent/a.jsonl")], transformers=[TypeTransformer(Raw)],
                 loader=ClickHouseLoader("flat", order_by=["id"]), schema=Raw),
        Pipeline(name="renamed", extractors=[FileExtractor("/nonexistent/b.jsonl")],
                 transformers=[TypeTransformer(Raw), ColumnTransformer(rename={"name": "title"})],
                 loader=ClickHouseLoader("renamed", order_by=["id"]), schema=Row),
    ]
"""

SCRIPT = """
import json, sys
from jetl.messages.wire import encode_records
from jetl.registry import get_pipeline
from jetl.transformers.chain import run_transformers
from jetl_transformer.handlers import warm_up

warm_up()
before = set(sys.modules)
body = encode_records([b'{"id": 1, "at": "2026-01-01T00:00:00+02:00", "name": "a"}'])
out = {name: run_transformers(get_pipeline(name), body, 1)[1] for name in ("flat", "renamed")}
print(json.dumps({"encodings": out, "imported": sorted(set(sys.modules) - before)}))
"""


def test_after_warm_up_the_first_batch_imports_nothing(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "warm_pipeline.py").write_text(PIPELINE)
    env = {"JETL_PIPELINES_DIR": str(tmp_path / "pipelines"), "JETL_DATA_DIR": str(tmp_path / "data"), "PATH": ""}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["encodings"] == {"flat": "arrow", "renamed": "arrow"}
    assert result["imported"] == []
