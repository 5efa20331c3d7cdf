"""The API reference in docs/reference/api.md is the code's own words, kept up to date: regenerate it with
`uv run python docs/reference/generate.py` when a public name, signature or docstring changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

GENERATOR = Path(__file__).parents[2] / "docs" / "reference" / "generate.py"


def test_the_api_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("generate_reference", GENERATOR)
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    text = generate.render()
    assert "### `Pipeline`" in text and "### `HttpExtractor`" in text  # every public name has its entry
    assert generate.OUT.read_text() == text, "docs/reference/api.md is out of date: run docs/reference/generate.py"
