"""Runtime registration: new or changed pipeline modules are picked up without a restart; a broken one is reported
and skipped while the others (and its own last good version) keep running."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetl.errors import ConfigError
from jetl.pipeline import Pipeline
from jetl.registry import discover, get_pipeline, get_pipeline_registry, on_reload, reload_errors
from jetl_scheduler.watch import PipelineWatcher

MODULE = """
from pydantic import BaseModel
from jetl import ConsoleLoader, Cron, FileExtractor, Pipeline

class Row(BaseModel):
    id: int

def register_pipelines():
    return [Pipeline(name="{name}", extractors=[FileExtractor("/nonexistent/*.jsonl")], loader=ConsoleLoader(),
                     schema=Row, schedule=Cron("{cron}"), description="{description}")]
"""


def write(folder: Path, stem: str, name: str, cron: str = "0 * * * *", description: str = "") -> Path:
    path = folder / f"{stem}_pipeline.py"
    path.write_text(MODULE.format(name=name, cron=cron, description=description))
    return path


def test_a_new_module_is_registered_on_the_next_poll(tmp_path: Path) -> None:
    write(tmp_path, "a", "alpha")
    discover(tmp_path)
    watcher = PipelineWatcher(tmp_path)
    assert watcher.poll() == []  # nothing changed since discovery
    write(tmp_path, "b", "beta")
    assert watcher.poll() == ["beta"]
    assert sorted(get_pipeline_registry()) == ["alpha", "beta"]


def test_a_changed_module_replaces_its_pipelines(tmp_path: Path) -> None:
    write(tmp_path, "a", "alpha", cron="0 * * * *")
    discover(tmp_path)
    old_hash = get_pipeline("alpha").code_hash
    write(tmp_path, "a", "alpha", cron="*/5 * * * *")
    assert PipelineWatcher(tmp_path).poll() == ["alpha"]
    p = get_pipeline("alpha")
    assert p.schedule is not None and p.schedule.expression == "*/5 * * * *"
    assert p.code_hash != old_hash


def test_same_size_same_mtime_edit_is_still_seen(tmp_path: Path) -> None:
    import os

    path = write(tmp_path, "a", "alpha", description="aaaa")
    discover(tmp_path)
    stat = path.stat()
    write(tmp_path, "a", "alpha", description="bbbb")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # content hash, not mtime and size, decides
    assert PipelineWatcher(tmp_path).poll() == ["alpha"]
    assert get_pipeline("alpha").description == "bbbb"


def test_a_broken_module_is_reported_and_skipped_and_its_last_good_version_stays(tmp_path: Path) -> None:
    write(tmp_path, "a", "alpha")
    write(tmp_path, "b", "beta")
    discover(tmp_path)
    watcher = PipelineWatcher(tmp_path)
    (tmp_path / "a_pipeline.py").write_text("def register_pipelines(:\n")  # syntax error
    write(tmp_path, "c", "gamma")
    assert watcher.poll() == ["gamma"]  # the others go on
    assert "alpha" in get_pipeline_registry()  # the last good version keeps running
    assert list(watcher.errors) == [str(tmp_path / "a_pipeline.py")]
    assert "a_pipeline.py:1" in watcher.errors[str(tmp_path / "a_pipeline.py")]
    assert watcher.poll() == []  # not retried until the file changes again
    write(tmp_path, "a", "alpha")
    assert watcher.poll() == ["alpha"] and reload_errors() == {}


def test_a_module_claiming_another_modules_name_is_skipped(tmp_path: Path) -> None:
    write(tmp_path, "a", "alpha")
    discover(tmp_path)
    write(tmp_path, "z", "alpha")
    assert PipelineWatcher(tmp_path).poll() == []
    assert get_pipeline("alpha").source_file.endswith("a_pipeline.py")
    assert "already registered" in reload_errors()[str(tmp_path / "z_pipeline.py")]


def test_get_pipeline_finds_a_module_added_since_the_last_poll(tmp_path: Path) -> None:
    """A run request can reach the extractor before its watcher polls: the lookup re-reads the folder."""
    write(tmp_path, "a", "alpha")
    discover(tmp_path)
    write(tmp_path, "b", "beta")
    assert get_pipeline("beta").name == "beta"
    with pytest.raises(ConfigError, match="known: alpha, beta"):
        get_pipeline("nope")


def test_listeners_see_reloaded_pipelines(tmp_path: Path) -> None:
    write(tmp_path, "a", "alpha")
    discover(tmp_path)
    seen: list[list[str]] = []

    def listener(pipelines: list[Pipeline]) -> None:
        seen.append([p.name for p in pipelines])

    def broken_listener(pipelines: list[Pipeline]) -> None:
        raise RuntimeError("a listener bug must not undo the reload")

    on_reload(broken_listener)
    on_reload(listener)
    write(tmp_path, "b", "beta")
    assert PipelineWatcher(tmp_path).poll() == ["beta"]
    assert seen == [["beta"]]
