"""Pipeline discovery: modules are found without configuration; broken ones stop start-up, naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetl.errors import DiscoveryError
from jetl.registry import discover, discover_report, get_pipeline, get_pipeline_registry

GOOD = """
from pydantic import BaseModel
from jetl import ConsoleLoader, FileExtractor, Pipeline

class Row(BaseModel):
    id: int

def register_pipelines():
    return [Pipeline(name="{name}", extractors=[FileExtractor("/nonexistent/*.jsonl")], loader=ConsoleLoader(),
                     schema=Row)]
"""


def write(folder: Path, filename: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / filename
    path.write_text(text)
    return path


def test_every_pipeline_module_is_registered(tmp_path: Path) -> None:
    write(tmp_path, "a_pipeline.py", GOOD.format(name="alpha"))
    write(tmp_path, "b_pipeline.py", GOOD.format(name="beta"))
    write(tmp_path, "helpers.py", "raise RuntimeError('not a pipeline module, never imported')")
    reg = discover(tmp_path)
    assert sorted(reg) == ["alpha", "beta"]
    assert get_pipeline("alpha").source_file.endswith("a_pipeline.py")
    assert len(get_pipeline("beta").code_hash) == 12


def test_settings_folder_is_used_when_nothing_was_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "a_pipeline.py", GOOD.format(name="alpha"))
    monkeypatch.setenv("JETL_PIPELINES_DIR", str(tmp_path))
    assert list(get_pipeline_registry()) == ["alpha"]


def test_duplicate_name_names_both_files(tmp_path: Path) -> None:
    write(tmp_path, "a_pipeline.py", GOOD.format(name="same"))
    write(tmp_path, "b_pipeline.py", GOOD.format(name="same"))
    with pytest.raises(DiscoveryError, match=r"b_pipeline\.py.*'same'.*a_pipeline\.py"):
        discover(tmp_path)


def test_import_failure_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "bad_pipeline.py", "import os\n\nx = 1\nraise ValueError('boom')\n")
    with pytest.raises(DiscoveryError, match=r"bad_pipeline\.py:4: .*ValueError: boom"):
        discover(tmp_path)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "bad_pipeline.py", "def register_pipelines(:\n    pass\n")
    with pytest.raises(DiscoveryError, match=r"bad_pipeline\.py:1"):
        discover(tmp_path)


def test_bad_pipeline_definition_is_a_discovery_error(tmp_path: Path) -> None:
    write(tmp_path, "x_pipeline.py", GOOD.format(name="has.dot"))
    with pytest.raises(DiscoveryError, match=r"x_pipeline\.py.*not a valid subject token"):
        discover(tmp_path)


def test_missing_register_function(tmp_path: Path) -> None:
    write(tmp_path, "x_pipeline.py", "X = 1\n")
    with pytest.raises(DiscoveryError, match="defines no register_pipelines"):
        discover(tmp_path)


def test_report_mode_skips_broken_modules(tmp_path: Path) -> None:
    write(tmp_path, "a_pipeline.py", GOOD.format(name="alpha"))
    write(tmp_path, "b_pipeline.py", "raise ImportError('nope')\n")
    found, errors = discover_report(tmp_path)
    assert list(found) == ["alpha"]
    assert list(errors) == [str(tmp_path / "b_pipeline.py")]


def test_unknown_pipeline_lists_known_ones(tmp_path: Path) -> None:
    write(tmp_path, "a_pipeline.py", GOOD.format(name="alpha"))
    discover(tmp_path)
    with pytest.raises(Exception, match=r"no pipeline named 'zeta' \(known: alpha\)"):
        get_pipeline("zeta")
