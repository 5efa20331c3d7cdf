"""The checked-in AsyncAPI documents (docs/asyncapi/*.json) match what the services' apps describe today."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jetl_docs_asyncapi", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _generator()


@pytest.mark.parametrize("service", GENERATE.SERVICES)
def test_the_checked_in_asyncapi_document_matches_the_app(service: str, tmp_path: Path) -> None:
    checked_in = (DOCS / f"{service}.json").read_text()
    assert GENERATE.render(service, tmp_path) == checked_in, (
        f"docs/asyncapi/{service}.json is stale: run `uv run python docs/asyncapi/generate.py` and commit it"
    )


def test_a_document_names_what_the_service_consumes_and_publishes(tmp_path: Path) -> None:
    channels = {c["address"] for c in GENERATE.specification("transformer", tmp_path)["channels"].values()}
    assert {"jetl.raw.>", "jetl.clean.>", "jetl.events.>", "jetl.dlq.>"} <= channels
