"""The run page follows a run it was opened before, and the pages keep their layout (issue 27 points 6, 7 and 9).

One stack for the module, with `shop` (2,400 orders, three bad, 24 batches) and `bulk` (40,000 rows, 120 bad, 40
batches: counts of five digits on the charts, and more dead-letter rows than one page holds).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import BAD, RECORDS, Dash, serve, shot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BULK = """
from pydantic import BaseModel
from jetl import FileExtractor, FileLoader, Pipeline, TypeTransformer

class Row(BaseModel):
    id: int
    amount: float

def register_pipelines():
    return [
        Pipeline(
            name="bulk",
            extractors=[FileExtractor("INPUT/*.jsonl", chunk_size=1000)],
            batch_size=1000,
            transformers=[TypeTransformer(Row)],
            loader=FileLoader("OUTPUT"),
            schema=Row,
        )
    ]
"""
BULK_ROWS = 40_000
BULK_BAD = set(range(17, BULK_ROWS, 333))
"""Line numbers whose `id` is not a number: 121 rejected records, about three per batch (letter)."""


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    tmp = tmp_path_factory.mktemp("ui-live")
    folder = tmp / "bulk-input"
    folder.mkdir()
    lines = (json.dumps({"id": f"x{n}" if n in BULK_BAD else n, "amount": n / 4}) for n in range(1, BULK_ROWS + 1))
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    code = BULK.replace("INPUT", str(folder)).replace("OUTPUT", str(tmp / "bulk-out"))
    with serve(tmp, {"bulk_pipeline.py": code}) as d:
        yield d


def _run(dash: Dash, *args: str) -> None:
    out = dash.jetl("run", *args)
    assert out.returncode == 0, out.stdout + out.stderr


def _status(dash: Dash, pipeline: str, run_id: str) -> str:
    out = dash.jetl("counts", pipeline, "--json")
    runs = {r["run_id"]: r for r in json.loads(out.stdout or "{}").get("runs", [])}
    return str(runs.get(run_id, {}).get("status", ""))


def test_a_run_page_opened_before_a_fast_runs_events_ends_completed_with_its_counts(
    dash: Dash, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    # the page's live feed is held until the run has ended: every event of the run is published before the
    # browser connects, the case a subscription from "now" missed (the page stayed "running" with zero counts)
    held: list[Any] = []
    page.route(re.compile(r"/live/runs\?"), lambda route: route.continue_() if held else held.append(route))
    _run(dash, "shop", "--no-wait", "--force", "--run-id", "shop-fast")
    with page.expect_request(re.compile(r"/live/runs\?")):
        page.goto(f"{dash.url}/runs/shop/shop-fast")
    status = page.locator("#run-status").inner_text()
    assert status in ("requested", "running"), f"the run ended before its page rendered ({status}): nothing to test"
    verdict = page.locator("#verdict")
    assert verdict.locator("b").inner_text() == "in flight" and "fail" not in (verdict.get_attribute("class") or "")
    assert " of " in page.locator("#batches").inner_text() or "so far" in page.locator("#batches").inner_text()
    shot(page, tmp_path, "in-flight")

    _wait_completed(dash, "shop", "shop-fast")
    assert len(held) == 1, "the page opened one live feed"
    with page.expect_navigation(timeout=60_000):  # the page reloads itself once the run has ended
        held[0].continue_()
        # the live feed alone, before that reload: the run as it ended, from its events
        page.wait_for_function(
            """([loaded, rejected]) => document.getElementById('run-status').textContent === 'completed'
                && document.querySelector('#ledger [data-stage=loaded]').textContent === String(loaded)
                && document.querySelector('#ledger [data-stage=rejected]').textContent === String(rejected)
                && document.getElementById('batches').textContent === '24 of 24'
                && document.querySelector('#verdict b').textContent === 'reconciles'""",
            arg=[RECORDS - len(BAD), len(BAD)],
            timeout=60_000,
        )
    # and the page it reloads to, from the tracker's state
    expect(page.locator("#run-status")).to_have_text("completed")
    ledger = page.locator("#ledger")
    expect(ledger.locator('[data-stage="loaded"]')).to_have_text(str(RECORDS - len(BAD)))
    expect(ledger.locator('[data-stage="rejected"]')).to_have_text(str(len(BAD)))
    expect(ledger.locator('[data-stage="extracted"]')).to_have_text(str(RECORDS))
    expect(page.locator("#batches")).to_have_text("24 of 24")  # 2,400 records in batches of 100, all settled
    expect(page.locator("#verdict b")).to_have_text("reconciles")
    expect(page.locator("#verdict")).to_have_class(re.compile(r"\bok\b"))
    shot(page, tmp_path, "completed")


def _wait_completed(dash: Dash, pipeline: str, run_id: str) -> None:
    deadline = time.monotonic() + 120
    while _status(dash, pipeline, run_id) != "completed":
        assert time.monotonic() < deadline, f"run {run_id} did not complete"
        time.sleep(0.5)
