"""`jetl demo` as a user runs it: a subprocess that starts everything itself and exits 0 with a summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_reconciles(tmp_path: Path) -> None:
    env = dict(os.environ, JETL_DATA_DIR=str(tmp_path / "data"), JETL_PIPELINES_DIR=str(ROOT / "pipelines"))
    out = subprocess.run(
        [sys.executable, "-m", "jetl", "demo", "--records", "1500", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    c = summary["counts"]
    assert summary["status"] == "completed" and summary["reconciles"]
    assert c["extracted"] == 1500
    assert c["rejected"] == 7  # 3 wrong types, 2 missing fields, 2 malformed lines in 1500 generated orders
    assert c["filtered"] == 1500 // 97  # test orders are filtered, not rejected
    assert summary["clickhouse_rows"] == c["loaded"] == 1500 - 7 - c["filtered"]
    assert summary["dead_letters"] == 7
    assert any(":733" in r and "malformed JSON" in r for r in summary["rejections"])
    assert [r["order_id"] for r in summary["sample_rows"]] == [1, 2, 3, 4, 5]
