"""The dashboard's pages rendered through Starlette's test client, on a fake client and bucket: what a page shows for
data the browser tests' stack cannot easily produce (a replay whose rows differ from its parent's)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

import jetl.ui.pages as pages
from jetl.projection import RunState
from jetl.protocols import Diff
from jetl.settings import JetlSettings
from jetl.ui.app import create_app


class FakeClient:
    """Answers the loader's diff as a ClickHouse or file loader would after a shadow replay."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []
        self.live = {"shop-replay"}
        """Shadows the loader still has: `jetl replay --diff` dropped the others after its diff."""

    async def live_shadows(self, pipeline: str, run_ids: list[str]) -> list[str]:
        return [r for r in run_ids if r in self.live]

    async def diff(self, pipeline: str, run_id: str, parent_run_id: str, **_: Any) -> Diff:
        self.asked.append((pipeline, run_id, parent_run_id))
        return Diff(
            key=["id"],
            added=1,
            removed=0,
            changed=3,
            unchanged=96,
            samples={"added": [[101]], "changed": [[4], [5], [6]]},
            columns={"amount": 3, "customer_tier": 1},
        )


class FakeDashboard:
    """Just what the diff page reads: the state bucket (the module's readers are patched) and the client."""

    def __init__(self) -> None:
        self.client = FakeClient()
        self.bucket = object()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Any:
    replay = RunState(pipeline="shop", run_id="shop-replay", parent_run_id="shop-first", shadow=True)
    dropped = RunState(pipeline="shop", run_id="shop-dropped", parent_run_id="shop-first", shadow=True)
    runs = {r.run_id: r for r in (replay, dropped)}

    async def get_run(kv: Any, pipeline: str, run_id: str) -> RunState | None:
        return runs.get(run_id) if pipeline == "shop" else None

    async def status_runs(kv: Any, pipeline: str | None = None) -> list[RunState]:
        return list(runs.values())

    monkeypatch.setattr(pages, "get_run", get_run)
    monkeypatch.setattr(pages, "status_runs", status_runs)
    a = create_app(JetlSettings())
    a.state.dashboard = FakeDashboard()  # no lifespan: the test client is not entered, nothing connects to NATS
    return a


def test_diff_page_shows_which_columns_changed_and_in_how_many_rows(app: Any) -> None:
    http = TestClient(app, base_url="http://127.0.0.1:8420")
    r = http.get("/diff", params={"pipeline": "shop", "run": "shop-replay"})
    assert r.status_code == 200, r.text[:500]
    assert app.state.dashboard.client.asked == [("shop", "shop-replay", "shop-first")]
    html = r.text
    assert "shop-replay against shop-first" in html
    assert "Columns that changed" in html
    assert '<td>amount</td><td class="num">3</td>' in html
    assert '<td>customer_tier</td><td class="num">1</td>' in html
    assert "[101]" in html  # a sample of the added keys


def test_diff_page_lists_only_kept_shadows_and_says_when_one_is_gone(app: Any) -> None:
    http = TestClient(app, base_url="http://127.0.0.1:8420")
    listing = http.get("/diff").text
    assert "shop-replay" in listing and "shop-dropped" not in listing  # the CLI dropped it after its diff
    r = http.get("/diff", params={"pipeline": "shop", "run": "shop-dropped"})
    assert r.status_code == 200
    assert "The shadow of replay <b>shop-dropped</b> is gone" in r.text
    assert app.state.dashboard.client.asked == []  # not diffed as an empty shadow ("REMOVED" every parent row)
    assert 'class="tile' not in r.text
    app.state.dashboard.client.live = set()
    assert "No shadow is kept" in http.get("/diff").text


def test_diff_page_says_when_a_run_is_not_a_replay(app: Any) -> None:
    r = TestClient(app, base_url="http://127.0.0.1:8420").get("/diff", params={"pipeline": "shop", "run": "shop-other"})
    assert r.status_code == 200
    assert "is not a replay" in r.text
    assert "Columns that changed" not in r.text


@pytest.mark.integration
async def test_run_index_pages_a_status_and_follows_a_run_that_changes(nats: Any) -> None:
    from jetl.bus import connect
    from jetl.settings import NatsSettings
    from jetl.state import bucket, run_key
    from jetl.ui.state import RunIndex, states_at

    nc = await connect(NatsSettings(url=nats.url))
    try:
        kv = await bucket(nc)
        for i in range(120):
            p = ("a", "b")[i % 2]
            st = RunState(pipeline=p, run_id=f"r{i:03d}", status="failed" if i % 10 == 0 else "completed")
            await kv.put(run_key(p, st.run_id), st.model_dump_json().encode())
        index = RunIndex()
        assert await index.refresh(nc, kv, step=50) is False  # a step at a time
        assert not index.complete
        while not await index.refresh(nc, kv, step=50):
            pass
        assert index.complete
        seqs, more = index.page(None, "failed", 5, None)
        got = [st.run_id for _, st in await states_at(nc, kv, seqs)]
        assert got == ["r110", "r100", "r090", "r080", "r070"] and more is not None  # latest first
        seqs, more = index.page(None, "failed", 5, more)
        assert [st.run_id for _, st in await states_at(nc, kv, seqs)] == ["r060", "r050", "r040", "r030", "r020"]
        seqs, more = index.page(None, "failed", 5, more)
        assert [st.run_id for _, st in await states_at(nc, kv, seqs)] == ["r010", "r000"] and more is None
        assert index.page("b", "failed", 5, None) == ([], None)  # every failed run is of pipeline a

        # a failed run that is retried and completes leaves the failed page; a deleted one is gone
        await kv.put(
            run_key("a", "r110"), RunState(pipeline="a", run_id="r110", status="completed").model_dump_json().encode()
        )
        await kv.delete(run_key("a", "r100"))
        await index.refresh(nc, kv)
        seqs, _ = index.page("a", "failed", 3, None)
        assert [st.run_id for _, st in await states_at(nc, kv, seqs)] == ["r090", "r080", "r070"]
        assert len(index.runs) == 119
    finally:
        await nc.close()


@pytest.mark.integration
def test_the_dashboard_renders_and_acts_on_its_one_connection(
    nats: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages and actions use the dashboard's one JetlClient: rendering the overview and clicking pause and resume
    open no NATS connection of their own (each used to open one per render or click)."""
    import nats as nats_py

    from jetl.settings import NatsSettings
    from jetl.testing.pipelines import file_pipeline
    from jetl.ui.security import CSRF_COOKIE, CSRF_FIELD

    folder = tmp_path / "pipelines"
    folder.mkdir()
    scheduled = file_pipeline("shop").replace("schema=Row", 'schema=Row, schedule=Cron("0 3 * * *")')
    (folder / "shop_pipeline.py").write_text(scheduled.replace("import FileExtractor", "import Cron, FileExtractor"))
    opened: list[str] = []
    real = nats_py.connect

    async def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append("connect")
        return await real(*args, **kwargs)

    monkeypatch.setattr(nats_py, "connect", counting)
    settings = JetlSettings(nats=NatsSettings(url=nats.url), pipelines_dir=folder)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8420") as http:
        assert http.get("/").status_code == 200
        form = {CSRF_FIELD: http.cookies[CSRF_COOKIE]}
        assert http.post("/pipelines/shop/pause", data=form).status_code == 200  # its bus connects on this first one
        connected = len(opened)
        assert connected >= 1
        assert http.post("/pipelines/shop/resume", data=form).status_code == 200  # redirected to the page
        assert 'id="pause"' in http.get("/pipelines/shop").text
        for _ in range(3):
            r = http.get("/")
            assert r.status_code == 200 and "shop" in r.text
        assert http.post("/pipelines/shop/pause", data=form).status_code == 200
        assert 'id="resume"' in http.get("/pipelines/shop").text
        assert http.post("/pipelines/shop/resume", data=form).status_code == 200
        assert len(opened) == connected


async def _shadow_letters(url: str) -> tuple[str, str]:
    """A run whose file had a line that is not JSON, two `jetl replay --diff` shadows of it that met the line again
    (one folded into the state bucket, one the tracker has not folded yet: only its run.requested is in the log),
    and the three dead letters of that one line; returns the shadows' run ids."""
    from jetl import subjects
    from jetl.bus import connect
    from jetl.events import RunCompleted, RunRequested, RunStarted
    from jetl.messages.deadletter import MALFORMED_INPUT, DeadLetter
    from jetl.settings import NatsSettings
    from jetl.state import apply, bucket

    folded, unfolded = "shop-rp20261207T060000ab12", "shop-rp20261207T060500cd34"
    nc = await connect(NatsSettings(url=url))
    try:
        kv = await bucket(nc)
        for ev in (
            RunRequested(pipeline="shop", run_id="shop-first"),
            RunStarted(pipeline="shop", run_id="shop-first"),
            RunCompleted(pipeline="shop", run_id="shop-first", extracted=1, loaded=0, rejected=1, filtered=0),
            RunRequested(pipeline="shop", run_id=folded, trigger="replay", parent_run_id="shop-first", shadow=True),
        ):
            await apply(kv, ev)
        js = nc.jetstream()
        late = RunRequested(pipeline="shop", run_id=unfolded, trigger="replay", parent_run_id="shop-first", shadow=True)
        await js.publish(subjects.events("shop", unfolded, "operator"), late.model_dump_json().encode())
        for run_id in ("shop-first", folded, unfolded):
            dl = DeadLetter(
                pipeline="shop",
                run_id=run_id,
                batch_id="shop-first/000000",
                stage="transform",
                reason="pipeline 'shop': orders.jsonl:7: not JSON",
                error_type=MALFORMED_INPUT,
                records=[{"index": None, "origin": "orders.jsonl:7", "field": None, "message": "not JSON"}],
            )
            await js.publish(subjects.dlq("shop", "transform"), dl.model_dump_json().encode())
    finally:
        await nc.close()
    return folded, unfolded


@pytest.mark.integration
def test_a_shadows_dead_letters_read_as_the_shadows_and_are_counted_once(nats: Any, tmp_path: Any) -> None:
    """`jetl replay --diff` meets its parent's malformed line again: the dashboard shows that letter as the shadow's
    (not "unreadable", as if a run that loads had rejected it) and counts the line once, the parent's."""
    import asyncio
    import re

    from jetl.settings import NatsSettings

    folded, unfolded = asyncio.run(_shadow_letters(nats.url))
    settings = JetlSettings(nats=NatsSettings(url=nats.url), pipelines_dir=tmp_path)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8420") as http:
        page = http.get("/dlq?pipeline=shop").text
        statuses = re.findall(r"<td>(shadow [^<]*|unreadable|redrivable)</td>", page)
        assert statuses == ["unreadable", f"shadow {folded}", f"shadow {unfolded}"]  # the parent's line is unreadable
        assert "1 record(s) in 1 letter(s), and 2 of shadow replays" in page
        groups = re.findall(r'<td>shop</td><td>([^<]*)</td><td class="num">(\d+)</td>', page)
        assert [n for _, n in groups] == ["1"]  # the line, once
        for run_id, total in (("shop-first", 1), (folded, 1)):  # each run's page lists its own letter
            assert f"{total} letter(s)" in http.get(f"/runs/shop/{run_id}").text


LAGGING = '''
from pydantic import BaseModel
from jetl import ConsoleLoader, Pipeline
from jetl.protocols import Check, SourceLag

class Row(BaseModel):
    id: int

class Behind:
    """A log-reading extractor that says how far behind it is."""

    async def extract(self, ctx):
        return
        yield

    def next_cursor(self):
        return None

    def check(self, settings):
        return Check("ok", "fake")

    async def lag(self, pipeline):
        return SourceLag(3 * 1024 * 1024, 42.0, "slot jetl_" + pipeline)

def register_pipelines():
    return [Pipeline(name="orders", extractors=[Behind()], loader=ConsoleLoader(), schema=Row)]
'''


@pytest.mark.integration
def test_the_overview_shows_how_far_a_log_reading_pipeline_is_behind_its_source(nats: Any, tmp_path: Any) -> None:
    from jetl.settings import NatsSettings

    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "orders_pipeline.py").write_text(LAGGING)
    settings = JetlSettings(nats=NatsSettings(url=nats.url), pipelines_dir=folder)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8420") as http:
        page = http.get("/").text
    assert "source lag" in page and "3.0 MiB, 42s behind (slot jetl_orders)" in page
