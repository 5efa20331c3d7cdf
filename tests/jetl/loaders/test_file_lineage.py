"""FileLoader lineage: parts know their run, a replayed batch removes its parent's part, a shadow folder is diffed
against the parent run's parts and dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from jetl import FileLoader, LoadContext
from jetl.errors import ConfigError
from jetl.messages.ids import batch_id
from jetl.protocols import LineageLoader


class Row(BaseModel):
    id: int
    city: str


def ctx(run: str, seq: int) -> LoadContext:
    return LoadContext(pipeline="p", run_id=run, batch_id=batch_id(run, seq), schema=Row)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_rows_by_run_and_a_superseded_batch(tmp_path: Path, fmt: str) -> None:
    ld = FileLoader(tmp_path, format=fmt, partition_by="city")  # type: ignore[arg-type]
    assert isinstance(ld, LineageLoader)
    ld.load([{"id": 1, "city": "a"}, {"id": 2, "city": "b"}], ctx("r1", 0))
    ld.load([{"id": 3, "city": "a"}], ctx("r1", 1))
    ld.load([{"id": 1, "city": "a"}], ctx("r2", 0))
    assert ld.rows_by_run("p") == {"r1": 3, "r2": 1}
    for _ in range(2):  # idempotent
        ld.remove_batch("p", batch_id("r1", 0))  # both partition folders of the batch
    assert ld.rows_by_run("p") == {"r1": 1, "r2": 1}
    assert sorted(int(r["id"]) for r in ld.read_all("p")) == [1, 3]


def test_shadow_diff_and_drop(tmp_path: Path) -> None:
    ld = FileLoader(tmp_path)
    ld.load([{"id": i, "city": "x"} for i in range(4)], ctx("r1", 0))
    shadow = ld.shadow("r1-rp")
    shadow.load([{"id": 0, "city": "x"}, {"id": 1, "city": "y"}, {"id": 9, "city": "x"}], ctx("r1-rp", 0))
    assert ld.rows_by_run("p") == {"r1": 4}  # the real folder is untouched
    d = ld.diff("p", "r1", "r1-rp")
    assert (d.added, d.removed, d.changed, d.unchanged) == (2, 3, 0, 1)
    assert {"id": 9, "city": "x"} in d.samples["added"]
    assert d.columns == {"city": 1, "id": 1}  # id 1 got city y, id 9 is new; the removed 2 and 3 add nothing
    assert ld.has_shadow("p", "r1-rp") and not ld.has_shadow("p", "r1")
    ld.drop_shadow("p", "r1-rp")
    assert not (tmp_path / ".shadow" / "r1-rp").exists()
    assert not ld.has_shadow("p", "r1-rp")


@pytest.mark.parametrize("run_id", ["../../escape", "..", "a/b", ""])
def test_a_shadow_stays_inside_root_shadow(tmp_path: Path, run_id: str) -> None:
    loader = FileLoader(tmp_path / "out")
    outside = tmp_path / "escape"
    outside.mkdir()
    (outside / "keep").write_text("x")
    with pytest.raises(ConfigError, match="run id"):
        loader.shadow(run_id)
    with pytest.raises(ConfigError, match="run id"):
        loader.drop_shadow("p", run_id)
    assert (outside / "keep").read_text() == "x"
