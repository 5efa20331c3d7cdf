"""The run and pipeline pages show a run's schema drift (`schema.drift`, summed per field) and what evolve changed
(`schema.evolved`), as `jetl audit` and `jetl status` do: rendered through Starlette's test client on a fake client
and bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import jetl.ui.pages as pages
from jetl.events import DriftField, Event, RunRequested, SchemaDrift, SchemaEvolved
from jetl.ops.deadletters import DeadLetterSummary
from jetl.ops.health import Freshness
from jetl.pipeline import Pipeline
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings
from jetl.ui.app import create_app

RUN = "items-20261125T0000Z"
CLEAN = "items-20261124T0000Z"


def run_events() -> list[Event]:
    """A run whose second and third batches drifted (a new field, a mistyped value, a missing one) and whose table
    evolved for them."""
    base = {"pipeline": "items", "run_id": RUN}
    return [
        RunRequested(**base, trigger="manual"),
        SchemaDrift(
            **base,
            batch_id=f"{RUN}/000002",
            seq=2,
            looked_at=10,
            fields=[DriftField(kind="new", path="color", seen="str", count=10, example='"red"')],
        ),
        SchemaDrift(
            **base,
            batch_id=f"{RUN}/000003",
            seq=3,
            looked_at=10,
            discarded_values=3,
            fields=[
                DriftField(kind="new", path="color", seen="str", count=4, example='"blue"'),
                DriftField(kind="changed", path="qty", expected="int", seen="float", count=3, example="2.5"),
                DriftField(kind="missing", path="name", expected="str", count=2),
            ],
        ),
        SchemaEvolved(
            **base,
            batch_id=f"{RUN}/000002",
            seq=2,
            evolution={"color": "text"},
            statements=["ALTER TABLE items ADD COLUMN IF NOT EXISTS color text"],
        ),
    ]


class FakeClient:
    """The event log of two runs of `items`: one drifted, one clean."""

    def __init__(self) -> None:
        self.log = {RUN: run_events(), CLEAN: []}
        self.read: list[str] = []

    async def events(self, run_id: str, pipeline: str | None = None) -> list[Event]:
        self.read.append(run_id)
        return self.log[run_id]

    async def recent_rows(self, pipeline: str, n: int, timeout: float = 5.0) -> None:
        return None


class FakeDashboard:
    def __init__(self, pipeline: Pipeline) -> None:
        self.client = FakeClient()
        self.bucket = object()
        self.nc = object()
        self.pipeline = pipeline

    async def refresh_letters(self) -> DeadLetterSummary:
        return DeadLetterSummary()

    def pipelines(self) -> tuple[dict[str, Pipeline], dict[str, str]]:
        return {"items": self.pipeline}, {}


@pytest.fixture
def dashboard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, FakeDashboard]:
    from pydantic import BaseModel

    from jetl import FileExtractor, FileLoader

    class Item(BaseModel):
        id: int
        name: str
        qty: int

    p = Pipeline(
        name="items",
        extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
        loader=FileLoader(str(tmp_path / "out")),
        schema=Item,
        schema_contract="freeze",
    )
    fake = FakeDashboard(p)
    state: RunState | None = None
    for ev in fake.client.log[RUN]:
        state = fold(state, ev)
    assert state is not None
    runs = {RUN: state, CLEAN: RunState(pipeline="items", run_id=CLEAN, status="completed")}

    async def get_run(kv: Any, pipeline: str, run_id: str) -> RunState | None:
        return runs.get(run_id)

    async def status_runs(kv: Any, pipeline: str | None = None) -> list[RunState]:
        return list(runs.values())

    async def recent_runs(nc: Any, kv: Any, pipeline: str, limit: int) -> tuple[list[tuple[int, RunState]], None]:
        return [(1, runs[RUN]), (2, runs[CLEAN])], None  # the newest run is clean: the page finds the drifted one

    async def letters_at(jc: Any, seqs: Any) -> list[Any]:
        return []

    async def freshness(jc: Any, p: Pipeline, now: Any, factor: float) -> Freshness:
        return Freshness(paused=False, last_ok=None, last_failed=None, stale=False)

    for name, fn in (
        ("get_run", get_run),
        ("status_runs", status_runs),
        ("recent_runs", recent_runs),
        ("letters_at", letters_at),
        ("freshness", freshness),
    ):
        monkeypatch.setattr(pages, name, fn)
    a = create_app(JetlSettings())
    a.state.dashboard = fake  # no lifespan: nothing connects to NATS
    return a, fake


def test_run_page_shows_each_drifted_field_and_what_evolved(dashboard: tuple[Any, FakeDashboard]) -> None:
    app, _ = dashboard
    html = TestClient(app, base_url="http://127.0.0.1:8420").get(f"/runs/items/{RUN}").text
    drift = html.split('id="schema-drift"')[1].split("</table>")[0]
    rows = [r for r in drift.split("<tr")[2:]]
    assert len(rows) == 3  # color summed over both batches, qty changed, name missing
    color = next(r for r in rows if "<code>color</code>" in r)
    assert "<td>new</td>" in color and "<td>14</td>" in color and "<td>2</td>" in color  # records, batches
    assert "&#34;red&#34;" in color and f"{RUN}/000002" in color  # the first example and the first batch
    qty = next(r for r in rows if "<code>qty</code>" in r)
    assert "<td>changed</td><td>int</td><td>float</td><td>3</td><td>1</td><td><code>2.5</code>" in qty
    assert f"{RUN}/000003" in qty
    assert "<td>missing</td><td>str</td><td>-</td><td>2</td>" in next(r for r in rows if "<code>name</code>" in r)
    assert "discarded 0 record(s) and 3 value(s)" in html
    evolved = html.split('id="schema-evolved"')[1].split("</table>")[0]
    assert "<code>color</code> text" in evolved
    assert "ALTER TABLE items ADD COLUMN IF NOT EXISTS color text" in evolved


def test_a_clean_run_page_has_no_schema_section(dashboard: tuple[Any, FakeDashboard]) -> None:
    app, _ = dashboard
    html = TestClient(app, base_url="http://127.0.0.1:8420").get(f"/runs/items/{CLEAN}").text
    assert "schema-drift" not in html and "schema-evolved" not in html


def test_pipeline_page_shows_the_latest_drifted_run_and_notes_drift_per_run(
    dashboard: tuple[Any, FakeDashboard],
) -> None:
    app, fake = dashboard
    html = TestClient(app, base_url="http://127.0.0.1:8420").get("/pipelines/items").text
    section = html.split('id="schema"')[1].split("</section>")[0]
    assert f'href="/runs/items/{RUN}"' in section and "contract freeze" in section
    assert "<code>qty</code>" in section and "<code>color</code> text" in section
    assert fake.client.read == [RUN]  # one run's events, the drifted one's, not the pipeline's whole log
    assert "schema drift: changed qty: float; missing name; new color" in html  # the run list's note, from state
    assert "schema evolved: color text" in html
