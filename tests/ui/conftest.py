"""The dashboard's browser tests: a real stack (nats-server and the four services as processes), a pipeline with
some bad records, `jetl ui` as its own process, and Debian's Chromium driven by Playwright.

Playwright cannot download browsers here: it drives /usr/bin/chromium (`.ci/run` installs it with apt-get).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jetl.stack.embedded import Stack, free_port, service_env
from jetl.testing.servers import nats_server

CHROMIUM = Path(os.environ.get("JETL_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

PIPELINE = """
import time
from pydantic import BaseModel
from jetl import Cron, FileExtractor, FileLoader, LambdaTransformer, Pipeline, TypeTransformer

def slow(record):
    time.sleep(0.002)  # so a run takes seconds and a page can watch its counts rise
    return record

class Order(BaseModel):
    id: int
    customer: str
    amount: float

def register_pipelines():
    return [
        Pipeline(
            name="shop",
            extractors=[FileExtractor("INPUT/*.jsonl", chunk_size=CHUNK)],
            batch_size=CHUNK,
            transformers=[LambdaTransformer(slow), TypeTransformer(Order)],
            loader=FileLoader("OUTPUT"),
            schema=Order,
            schedule=Cron("0 3 * * *"),
        )
    ]
"""

RECORDS = 2400
BAD = {7: "seven", 123: "one two three", 2001: "n/a"}
"""Line numbers (1-based) whose `id` is not a number: the transformer dead-letters them with file:line."""


def write_orders(folder: Path) -> Path:
    """A JSONL file of orders, a few of them bad."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(1, RECORDS + 1):
        rid: Any = BAD.get(n, n)
        lines.append(json.dumps({"id": rid, "customer": f"c{n % 97}", "amount": n * 1.5}))
    path = folder / "orders.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Dash:
    """The stack, the dashboard's URL, and what a test needs to check the CLI's view of the same things."""

    url: str
    env: dict[str, str]
    data: Path
    pipelines: Path
    proc: subprocess.Popen[bytes]

    def jetl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `jetl` CLI against the same stack."""
        return subprocess.run(
            [sys.executable, "-m", "jetl", *args], env=self.env, capture_output=True, text=True, timeout=120
        )


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until the dashboard answers (or its process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jetl ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer at {url} within {timeout:.0f}s")


@contextlib.contextmanager
def serve(tmp_path: Path, extra: dict[str, str] | None = None) -> Iterator[Dash]:
    """A running stack with the `shop` pipeline (and the `extra` modules, {file name: code}), and `jetl ui` serving
    it on a free loopback port."""
    data, pipelines = tmp_path / "data", tmp_path / "pipelines"
    pipelines.mkdir()
    write_orders(data / "input")
    code = PIPELINE.replace("INPUT", str(data / "input")).replace("OUTPUT", str(data / "out")).replace("CHUNK", "100")
    (pipelines / "shop_pipeline.py").write_text(code)
    for name, text in (extra or {}).items():
        (pipelines / name).write_text(text)
    port = free_port()
    with nats_server(tmp_path / "nats") as nats, Stack(data, pipelines, nats_url=nats.url) as stack:
        # the dashboard and the CLI reach the stack as its operator (no user on a bare test server)
        op = stack.operator
        creds = {"JETL_NATS__USER": op.user} if op.user else {}
        if op.password is not None:
            creds["JETL_NATS__PASSWORD"] = op.password.get_secret_value()
        env = service_env(nats.url, data, pipelines, creds)
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetl", "ui", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/static/app.css", proc)
            yield Dash(url=url, env=env, data=data, pipelines=pipelines, proc=proc)
        finally:
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            print(out.decode(errors="replace")[-3000:])


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    """The stack and dashboard of `serve` (one per module: the stack is four processes)."""
    with serve(tmp_path_factory.mktemp("ui")) as d:
        yield d


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, dash: Dash) -> Iterator[Any]:
    """A fresh page; console errors, page errors and failed requests fail the test when it ends."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}") if "/live/" not in r.url else None)
    pg.set_default_timeout(30_000)
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, f"the browser reported errors: {errors}"


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot of the page under the test's own folder, and print where."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
