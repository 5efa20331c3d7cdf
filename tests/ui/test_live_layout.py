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
    # a folder name with no place to break a line: the destination tile must still hold it
    out = tmp / "bulk_destination_folder_whose_name_has_no_place_to_break_a_line"
    code = BULK.replace("INPUT", str(folder)).replace("OUTPUT", str(out))
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


def test_the_diff_page_compares_a_kept_shadow_as_the_cli_did_and_says_a_dropped_one_is_gone(
    dash: Dash, page: Any, tmp_path: Path
) -> None:
    replays = {}
    for name, extra in (("dropped", ()), ("kept", ("--keep-shadow",))):
        out = dash.jetl("replay", "shop", "--run", "shop-fast", "--diff", "--json", *extra)
        assert out.returncode == 0, out.stdout + out.stderr
        replays[name] = json.loads(out.stdout)
    cli = replays["kept"]["diff"]
    assert cli["unchanged"] == RECORDS - len(BAD)  # the same code: the same rows

    page.goto(f"{dash.url}/diff?pipeline=shop")
    listed = page.locator("#shadows a").all_inner_texts()
    assert listed == [replays["kept"]["run_id"]], f"the CLI dropped {replays['dropped']['run_id']}: {listed}"
    page.locator("#shadows a").first.click()
    page.wait_for_selector(".tiles")
    for kind in ("added", "removed", "changed", "unchanged"):
        tile = page.locator(".tiles .tile", has=page.locator(f"h3:text-is('{kind}')"))
        assert tile.locator("b").inner_text() == str(cli[kind]), kind
    shot(page, tmp_path, "diff-kept")

    page.goto(f"{dash.url}/diff?pipeline=shop&run={replays['dropped']['run_id']}")
    assert "is gone" in page.locator("#gone").inner_text()
    assert page.locator(".tiles").count() == 0 and page.locator("p.error").count() == 0
    shot(page, tmp_path, "diff-gone")


def _wait_completed(dash: Dash, pipeline: str, run_id: str) -> None:
    deadline = time.monotonic() + 120
    while _status(dash, pipeline, run_id) != "completed":
        assert time.monotonic() < deadline, f"run {run_id} did not complete"
        time.sleep(0.5)


def test_charts_fit_their_labels_and_label_each_run_once(dash: Dash, page: Any, tmp_path: Path) -> None:
    _run(dash, "bulk")
    _run(dash, "bulk")  # a second run (it finds nothing new): two points on the charts
    page.goto(f"{dash.url}/pipelines/bulk")
    for chart in ("chart-loaded", "chart-rejected", "chart-duration"):
        page.wait_for_selector(f"#{chart} canvas")
        axes = page.evaluate(
            """(id) => {
            const u = document.getElementById(id).uplot;
            const width = (ax) => { u.ctx.font = ax.font[0];
                return Math.max(0, ...ax._values.map(v => u.ctx.measureText(String(v)).width / devicePixelRatio)); };
            const y = u.axes[1];
            return {x: u.axes[0]._values.map(String), y: y._values.map(String), widest: width(y),
                    room: y._size - y.ticks.size - y.gap};
        }""",
            chart,
        )
        assert axes["widest"] <= axes["room"], f"{chart}: y labels {axes['y']} are wider than their axis"
        assert len(set(axes["x"])) == len(axes["x"]), f"{chart}: an x label twice: {axes['x']}"
    loaded_labels = page.evaluate("document.getElementById('chart-loaded').uplot.axes[1]._values.map(String)")
    assert any(len(v) >= 6 for v in loaded_labels), loaded_labels  # "40,000": the label that was cut to "0,000"
    shot(page, tmp_path, "pipeline")


def test_a_runs_row_keeps_its_five_stage_bars_on_one_line(dash: Dash, page: Any, tmp_path: Path) -> None:
    page.goto(f"{dash.url}/runs")
    rows = page.locator("#runs tbody tr")
    assert rows.count() >= 3
    for i in range(rows.count()):
        cell = rows.nth(i).locator("td.bars").bounding_box()
        boxes = [b.bounding_box() for b in rows.nth(i).locator(".bar").all()]
        assert len(boxes) == 5
        assert len({round(b["y"]) for b in boxes}) == 1, f"row {i}: the stage bars wrap: {boxes}"
        assert boxes[-1]["x"] + boxes[-1]["width"] <= cell["x"] + cell["width"] + 0.5
    shot(page, tmp_path, "runs")


def test_the_overview_tiles_hold_their_text(dash: Dash, page: Any, tmp_path: Path) -> None:
    page.goto(f"{dash.url}/")
    tiles = page.locator(".tile")
    assert tiles.count() >= 5
    assert page.locator(".tile", has_text="destination").count() >= 1
    for i in range(tiles.count()):
        tile = tiles.nth(i)
        box = tile.bounding_box()
        for child in tile.locator("h3, b, p").all():
            c = child.bounding_box()
            assert c["x"] + c["width"] <= box["x"] + box["width"] + 0.5, f"tile {tile.inner_text()!r} overflows"
        assert tile.evaluate("el => el.scrollWidth <= el.clientWidth"), f"tile {tile.inner_text()!r} overflows"
    shot(page, tmp_path, "overview")


def test_dead_letters_come_a_page_of_rows_at_a_time_and_every_record_once(
    dash: Dash, page: Any, tmp_path: Path
) -> None:
    page.goto(f"{dash.url}/dlq?pipeline=bulk")
    origins: list[str] = []
    pages = 0
    while True:
        pages += 1
        rows = page.locator("table.dlq tbody tr")
        assert rows.count() <= 25
        origins += page.locator("table.dlq td.origin").all_inner_texts()
        if pages == 1:
            assert rows.count() == 25
            height = page.evaluate("document.documentElement.scrollHeight")
            assert height < 2500, f"the first page of dead letters is {height} px tall"
            shot(page, tmp_path, "dead-letters-page-1")
        more = page.locator("#next-page")
        if more.count() == 0:
            break
        more.click()
        page.wait_for_load_state()
        assert pages < 10
    assert pages == 5  # 121 records: four pages of 25 and one of 21
    assert sorted(origins) == sorted(f"{dash.data.parent / 'bulk-input' / 'rows.jsonl'}:{n}" for n in BULK_BAD)
    page.locator("#first-page").click()
    assert page.locator("table.dlq td.origin").first.inner_text() == origins[0]
