"""The README's HTTP and database extractor examples run as written: each pipeline module is taken from the README,
loaded the way the services load it, and extracts from a stand-in API (httpx.MockTransport) or a SQLite file."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from jetl.extractors.http.extractor import _Borrowed
from jetl.protocols import ExtractContext
from jetl.registry import load_module

README = Path(__file__).resolve().parents[2] / "README.md"


def example(module: str) -> str:
    """The README's python block that starts with `# pipelines/<module>`."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        if block.startswith(f"# pipelines/{module}"):
            return str(block)
    raise AssertionError(f"README has no example pipelines/{module}")


def records(extractor: Any, cursor: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        ctx = ExtractContext(pipeline="p", run_id="r1", cursor=cursor)
        return [r for chunk in [c async for c in extractor.extract(ctx)] for r in chunk.records]

    return asyncio.run(go())


def test_the_http_example_pages_authenticates_and_keeps_a_high_water_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tickets_pipeline.py").write_text(example("tickets_pipeline.py"))
    monkeypatch.setenv("TICKETS_TOKEN", "t0ken")
    monkeypatch.chdir(tmp_path)
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.headers["Authorization"] == "Bearer t0ken"
        if request.url.params.get("page") == "2":
            return httpx.Response(200, json={"results": [{"id": 3, "subject": "c", "updated_at": "2026-11-03"}]})
        rows = [
            {"id": 1, "subject": "a", "updated_at": "2026-11-01"},
            {"id": 2, "subject": "b", "updated_at": "2026-11-02"},
        ]
        return httpx.Response(200, json={"results": rows, "next": "https://api.example.com/v1/tickets?page=2"})

    (pipeline,) = load_module(tmp_path / "tickets_pipeline.py")
    extractor = pipeline.extractors[0]
    extractor._transport = _Borrowed(httpx.MockTransport(api))
    assert [r["id"] for r in records(extractor)] == [1, 2, 3]
    assert extractor.next_cursor()["value"] == "2026-11-03"
    first_run = len(seen)
    records(extractor, extractor.next_cursor())
    assert seen[first_run].url.params["updated_since"] == "2026-11-03"  # the next run asks only for what changed


def test_the_http_example_without_its_token_fails_to_load_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tickets_pipeline.py").write_text(example("tickets_pipeline.py"))
    monkeypatch.delenv("TICKETS_TOKEN", raising=False)
    with pytest.raises(Exception, match=r"tickets_pipeline.py:\d+: .*KeyError"):
        load_module(tmp_path / "tickets_pipeline.py")


def test_the_database_example_reads_incrementally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "customers_pipeline.py").write_text(example("customers_pipeline.py"))
    monkeypatch.chdir(tmp_path)
    db = sqlite3.connect(tmp_path / "shop.db")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, updated_at TIMESTAMP)")
    db.executemany(
        "INSERT INTO customers VALUES (?, ?, ?)",
        [(1, "ada", "2026-11-01 10:00:00"), (2, "bob", "2026-11-01 10:00:00"), (3, "cy", "2026-11-02 09:00:00")],
    )
    db.commit()
    (pipeline,) = load_module(tmp_path / "customers_pipeline.py")
    extractor = pipeline.extractors[0]
    assert [r["id"] for r in records(extractor)] == [1, 2, 3]
    cursor = extractor.next_cursor()
    db.execute("INSERT INTO customers VALUES (4, 'di', '2026-11-02 09:00:00')")  # ties the mark: still read
    db.commit()
    assert [r["id"] for r in records(extractor, cursor)] == [4]
