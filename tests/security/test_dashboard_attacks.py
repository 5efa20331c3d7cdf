"""The dashboard against a hostile web page and a hostile service. A DNS-rebinding page (a foreign `Host`), a POST
from an opaque origin (`Origin: null`), a CSRF cookie planted by another page or signed by another server: each is
refused before any page or action runs. The token never comes from a command line, and can be required on loopback
too. A malformed dead letter (any service may publish `{}` to JETL_DLQ) is listed as malformed, never a 500.

Each refusal has a control beside it: the same request, honest, reaches the action (which the tests replace with a
recorder, so "nothing changed" means the action never ran).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.testclient import TestClient

import jetl.ui.actions as actions
import jetl.ui.pages as pages
from jetl import subjects
from jetl.errors import ConfigError
from jetl.settings import JetlSettings, NatsSettings, UiSettings
from jetl.stack._process import free_port
from jetl.testing.servers import NatsHandle
from jetl.ui.app import create_app
from jetl.ui.security import CSRF_COOKIE, csrf_token

HOME = "http://127.0.0.1:8420"


class Recorder:
    """Stands in for the pages and actions: records each call, so a refused request provably ran nothing."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def page(self, request: Request) -> Response:
        self.calls.append(f"GET {request.url.path}")
        return PlainTextResponse(f'<form><input name="csrf" value="{csrf_token(request)}"></form>')

    async def action(self, request: Request) -> Response:
        self.calls.append(f"POST {request.url.path}")
        return PlainTextResponse("done")


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    r = Recorder()
    monkeypatch.setattr(pages, "overview", r.page)
    monkeypatch.setattr(pages, "dead_letters", r.page)
    monkeypatch.setattr(actions, "pause", r.action)
    monkeypatch.setattr(actions, "run_now", r.action)
    return r


def app(**ui: Any) -> Any:
    return create_app(JetlSettings(ui=UiSettings(**ui)))  # the test client is not entered: nothing connects


def signed_cookie(http: TestClient) -> str:
    """Open a page as a browser would: the CSRF cookie this server signed."""
    assert http.get("/").status_code == 200
    return http.cookies[CSRF_COOKIE]


# -- Host: DNS rebinding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8420", "127.0.0.1.evil.example", "[::2]:8420", ""])
def test_a_foreign_host_header_is_refused_before_any_page_or_action(rec: Recorder, host: str) -> None:
    http = TestClient(app(), base_url=HOME)
    cookie = signed_cookie(http)
    rec.calls.clear()
    headers = {"host": host}
    assert http.get("/dlq", headers=headers).status_code == 421  # the dead letters stay unread
    run = http.post("/pipelines/shop/run", data={"csrf": cookie}, headers=headers)
    assert run.status_code == 421
    assert rec.calls == []  # no page rendered, no run requested


@pytest.mark.parametrize("host", ["127.0.0.1:8420", "localhost:8420", "[::1]:8420", "LOCALHOST"])
def test_loopback_host_names_are_answered(rec: Recorder, host: str) -> None:
    http = TestClient(app(), base_url=HOME)
    assert http.get("/dlq", headers={"host": host}).status_code == 200
    assert rec.calls == ["GET /dlq"]


def test_a_configured_host_name_and_the_bind_address_are_answered(rec: Recorder) -> None:
    http = TestClient(app(allowed_hosts=["jetl.internal"], host="10.1.2.3", token="t0ken"), base_url=HOME)
    auth = {"authorization": "Bearer t0ken"}
    assert http.get("/", headers={**auth, "host": "jetl.internal:443"}).status_code == 200
    assert http.get("/", headers={**auth, "host": "10.1.2.3:8420"}).status_code == 200
    assert http.get("/", headers={**auth, "host": "other.internal"}).status_code == 421


# -- CSRF: Origin null, planted cookies ----------------------------------------------------------------------------


def test_the_honest_post_reaches_the_action(rec: Recorder) -> None:
    http = TestClient(app(), base_url=HOME)
    cookie = signed_cookie(http)
    assert http.post("/pipelines/shop/pause", data={"csrf": cookie}, headers={"origin": HOME}).status_code == 200
    assert rec.calls[-1] == "POST /pipelines/shop/pause"  # the control: refusals below are the checks, not the setup


def test_a_post_from_origin_null_is_refused_even_with_a_valid_token(rec: Recorder) -> None:
    http = TestClient(app(), base_url=HOME)
    cookie = signed_cookie(http)
    rec.calls.clear()
    refused = http.post("/pipelines/shop/pause", data={"csrf": cookie}, headers={"origin": "null"})
    assert refused.status_code == 403 and "Origin: null" in refused.text
    other = http.post("/pipelines/shop/pause", data={"csrf": cookie}, headers={"origin": "http://evil.example"})
    assert other.status_code == 403
    assert rec.calls == []


@pytest.mark.parametrize("planted", ["planted", "planted.0000", "a.b.c", "n\u00e9.\u00fc"])
def test_a_planted_csrf_cookie_is_refused(rec: Recorder, planted: str) -> None:
    """A page that can set a cookie for the dashboard's host (a sibling site, a rebinding page before the Host check)
    plants one, and submits the same value in its form: double submit alone would accept it."""
    http = TestClient(app(), base_url=HOME)
    raw = f"{CSRF_COOKIE}={planted}".encode()  # as a browser sends it: bytes (UTF-8 here), never refused with a 500
    refused = http.post("/pipelines/shop/pause", data={"csrf": planted}, headers={"cookie": raw})  # type: ignore[dict-item]
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert rec.calls == []


def test_a_csrf_cookie_signed_by_another_dashboard_is_refused(rec: Recorder) -> None:
    elsewhere = signed_cookie(TestClient(app(), base_url=HOME))  # another server: its own secret
    rec.calls.clear()
    http = TestClient(app(), base_url=HOME, cookies={CSRF_COOKIE: elsewhere})
    assert http.post("/pipelines/shop/pause", data={"csrf": elsewhere}).status_code == 403
    assert rec.calls == []
    # and a page this server renders replaces the foreign cookie with one of its own
    page = http.get("/")
    assert page.status_code == 200 and page.cookies[CSRF_COOKIE] != elsewhere


# -- the token: from the environment or a file, never the command line; required on loopback on request ----------


def test_the_token_is_not_taken_from_the_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jetl", "ui", "--token", "s3cret", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert out.returncode != 0 and "--token" in out.stdout + out.stderr  # an unknown option: nothing served


def test_a_token_can_be_required_on_loopback(rec: Recorder) -> None:
    with pytest.raises(ConfigError, match="requires one"):
        app(require_token=True)
    http = TestClient(app(require_token=True, token="t0ken"), base_url=HOME)
    assert http.get("/").status_code == 401 and rec.calls == []
    assert http.get("/", headers={"authorization": "Bearer t0ken"}).status_code == 200


def test_the_token_file_must_be_owner_only(rec: Recorder, tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text("from-a-file\n")
    file.chmod(0o644)
    with pytest.raises(ConfigError, match="owner-only"):
        app(token_file=file)
    file.chmod(0o600)
    http = TestClient(app(token_file=file, require_token=True), base_url=HOME)
    assert http.get("/").status_code == 401
    assert http.get("/", headers={"authorization": "Bearer from-a-file"}).status_code == 200


# -- a malformed dead letter is shown as malformed --------------------------------------------------------------


@pytest.fixture
def poisoned(nats: NatsHandle) -> Iterator[NatsHandle]:
    """JETL_DLQ holding what any service may publish there: `{}`, bytes that are not JSON, a letter on another
    pipeline's subject."""

    async def publish() -> None:
        nc = await nats_py.connect(nats.url)
        js = nc.jetstream()
        await js.publish(subjects.dlq("shop", "transform"), b"{}")
        await js.publish(subjects.dlq("shop", "load"), b"\x00\xff not json <script>alert(1)</script>")
        await js.publish(subjects.dlq("shop", "load"), b"[1, 2]")
        await nc.close()

    import asyncio

    asyncio.run(publish())
    yield nats


@pytest.mark.integration
def test_malformed_dead_letters_are_listed_as_malformed_not_a_500(poisoned: NatsHandle, tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    settings = JetlSettings(nats=NatsSettings(url=poisoned.url), pipelines_dir=tmp_path / "pipelines")
    with TestClient(create_app(settings), base_url=HOME) as http:
        for url in ("/dlq", "/dlq?pipeline=shop", "/dlq?pipeline=shop&reason=x", "/"):
            page = http.get(url)
            assert page.status_code == 200, (url, page.text[-2000:])
        page = http.get("/dlq?pipeline=shop")
        assert page.text.count(">malformed<") == 3  # each one listed, with status malformed
        assert "<script>alert(1)" not in page.text  # and never its bytes as markup
        assert 'name="seq"' not in page.text  # nothing malformed is offered for a redrive
        confirm = http.post("/dlq/redrive", data={"csrf": http.cookies[CSRF_COOKIE], "pipeline": "shop", "seq": "1"})
        assert confirm.status_code == 200  # the confirmation page reads the letter too


# -- the same attacks from a real browser ------------------------------------------------------------------------


CHROMIUM = Path(os.environ.get("JETL_TEST_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture
def served(nats: NatsHandle, rec: Recorder, tmp_path: Path) -> Iterator[str]:
    """The dashboard (pages and actions replaced by the recorder) served by uvicorn on a free loopback port; its
    port."""
    (tmp_path / "pipelines").mkdir()
    settings = JetlSettings(nats=NatsSettings(url=nats.url), pipelines_dir=tmp_path / "pipelines")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)  # polls uvicorn's own "listening" flag: it offers no event to wait on
    assert server.started
    yield f"{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.integration
def test_a_dns_rebinding_page_in_chromium_reads_nothing_and_runs_nothing(served: str, rec: Recorder) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    port = served
    with sync_playwright() as pw:
        # rebind.test resolves to 127.0.0.1, as an attacker's DNS answers once the victim has the page open
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--host-resolver-rules=MAP rebind.test 127.0.0.1"],
        )
        try:
            page = browser.new_page()
            home = page.goto(f"http://127.0.0.1:{port}/dlq")  # the control: the user's own tab
            assert home is not None and home.status == 200 and rec.calls == ["GET /dlq"]
            rebound = page.goto(f"http://rebind.test:{port}/dlq")
            assert rebound is not None and rebound.status == 421
            # the attacker's page, same origin as far as the browser knows, fetches and posts
            got = page.evaluate(
                """async () => {
                    const read = await fetch('/dlq');
                    const form = new URLSearchParams({csrf: 'x'});
                    const post = await fetch('/pipelines/shop/run', {method: 'POST', body: form});
                    return [read.status, post.status];
                }"""
            )
            assert got == [421, 421]
            # an opaque origin (a sandboxed frame, a data: page) posting the dashboard's own form
            page.set_content(
                f'<form id="f" method="post" action="http://127.0.0.1:{port}/pipelines/shop/run">'
                '<input name="csrf" value="x"></form>'
            )
            with page.expect_response(lambda r: "/pipelines/shop/run" in r.url) as answer:
                page.evaluate("document.getElementById('f').submit()")
            assert answer.value.status == 403
            assert rec.calls == ["GET /dlq"]  # nothing read after the control, nothing run
        finally:
            browser.close()
