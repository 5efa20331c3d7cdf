"""FileLoader: JSONL, CSV and Parquet parts named by batch id, atomic, partitioned, confined to the root."""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, Field

from jetl import FileLoader, LoadContext
from jetl.errors import ConfigError
from jetl.messages.ids import batch_id
from jetl.protocols import Check, log_version
from jetl.settings import JetlSettings


class Color(StrEnum):
    red = "red"
    blue = "blue"


class Sale(BaseModel):
    id: int
    date: date
    at: datetime
    amount: Decimal = Field(max_digits=8, decimal_places=2)
    color: Color
    uid: UUID
    tags: list[str]
    note: str | None = None
    meta: dict[str, Any] = {}


def sales() -> list[dict[str, Any]]:
    rows = [
        Sale(
            id=i,
            date=date(2026, 11, 25 + i % 2),
            at=datetime(2026, 11, 25, 8, i, tzinfo=UTC),
            amount=Decimal(f"{i}.50"),
            color=Color.red if i % 2 else Color.blue,
            uid=UUID(int=i),
            tags=["a", str(i)],
            note=None if i % 2 else "n",
            meta={"k": i},
        )
        for i in range(4)
    ]
    return [r.model_dump() for r in rows]


def ctx(seq: int = 1, run: str = "r1", schema: type[BaseModel] | None = Sale) -> LoadContext:
    return LoadContext(pipeline="sales", run_id=run, batch_id=batch_id(run, seq), schema=schema)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_jsonl_part_named_by_batch_id(tmp_path: Path) -> None:
    loader = FileLoader(tmp_path)
    assert loader.load(sales(), ctx(seq=7)) == 4
    assert files(tmp_path) == ["sales/r1/000007.jsonl"]
    lines = (tmp_path / "sales/r1/000007.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["amount"] == "1.50" and json.loads(lines[1])["color"] == "red"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_same_batch_twice_leaves_one_copy(tmp_path: Path, fmt: Any) -> None:
    loader = FileLoader(tmp_path, format=fmt)
    loader.load(sales(), ctx())
    loader.load(sales(), ctx())
    assert len(loader.read_all("sales")) == 4
    loader.load(sales(), ctx(seq=2))
    assert len(loader.read_all("sales")) == 8
    assert not [f for f in files(tmp_path) if ".tmp-" in f]


def test_csv_cells_are_text_with_a_header_from_the_schema(tmp_path: Path) -> None:
    loader = FileLoader(tmp_path, format="csv")
    loader.load(sales()[:2], ctx())
    with open(tmp_path / "sales/r1/000001.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [*Sale.model_fields, "_jetl_version"]  # each row's place in the source's log
    assert rows[1] == [
        "0",
        "2026-11-25",
        "2026-11-25T08:00:00+00:00",
        "0.50",
        "blue",
        str(UUID(int=0)),
        '["a","0"]',
        "n",
        '{"k":0}',
        str(ctx().base_version),  # a batch without a version of its own: one after every versioned batch
    ]
    assert rows[2][7] == ""  # None is an empty cell


def test_parquet_types_follow_the_model(tmp_path: Path) -> None:
    loader = FileLoader(tmp_path, format="parquet")
    loader.load(sales(), ctx())
    table = pq.read_table(tmp_path / "sales/r1/000001.parquet")
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "id": "int64",
        "date": "date32[day]",
        "at": "timestamp[us, tz=UTC]",
        "amount": "decimal128(8, 2)",
        "color": "string",
        "uid": "string",
        "tags": "list<element: string>",
        "note": "string",
        "meta": "string",
        "_jetl_version": "uint64",
    }
    first = table.to_pylist()[0]
    assert first["amount"] == Decimal("0.50") and first["tags"] == ["a", "0"] and first["meta"] == '{"k":0}'


def test_parquet_without_a_schema_infers_types(tmp_path: Path) -> None:
    loader = FileLoader(tmp_path, format="parquet")
    loader.load([{"a": 1, "c": Color.red}, {"a": 2, "c": Color.blue}], ctx(schema=None))
    assert loader.read_all("sales") == [{"a": 1, "c": "red"}, {"a": 2, "c": "blue"}]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_partition_folders_by_field(tmp_path: Path, fmt: Any) -> None:
    loader = FileLoader(tmp_path, format=fmt, partition_by="date")
    loader.check_schema(Sale)
    loader.load(sales(), ctx())
    assert files(tmp_path) == [
        f"sales/date=2026-11-25/r1/000001.{fmt}",
        f"sales/date=2026-11-26/r1/000001.{fmt}",
    ]
    if fmt == "parquet":  # Hive style: the partition column lives in the folder name, not in the file
        dataset = ds.dataset(tmp_path / "sales", format="parquet", partitioning="hive")
        table = dataset.to_table()
        assert sorted(table.column("id").to_pylist()) == [0, 1, 2, 3]
        assert sorted(set(table.column("date").to_pylist())) == ["2026-11-25", "2026-11-26"]
    back = sorted(loader.read_all("sales"), key=lambda r: r["id"])
    assert [str(r["date"]) for r in back] == ["2026-11-25", "2026-11-26", "2026-11-25", "2026-11-26"]


def test_hostile_partition_value_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "out"
    loader = FileLoader(root, partition_by="day")
    hostile = [
        {"id": 1, "day": "../../../escaped"},
        {"id": 2, "day": "/etc/passwd"},
        {"id": 3, "day": ".."},
        {"id": 4, "day": None},
    ]
    assert loader.load(hostile, ctx(schema=None)) == 4
    assert [p for p in tmp_path.rglob("*") if not p.is_relative_to(root)] == []
    assert files(root) == [
        "sales/day=%2Fetc%2Fpasswd/r1/000001.jsonl",
        "sales/day=..%2F..%2F..%2Fescaped/r1/000001.jsonl",
        "sales/day=../r1/000001.jsonl",
        "sales/day=__HIVE_DEFAULT_PARTITION__/r1/000001.jsonl",
    ]
    assert sorted(r["id"] for r in loader.read_all("sales")) == [1, 2, 3, 4]


def test_batch_id_that_escapes_the_root_is_refused(tmp_path: Path) -> None:
    loader = FileLoader(tmp_path / "out")
    bad = LoadContext(pipeline="sales", run_id="x", batch_id="../../../../tmp/evil/000001")
    with pytest.raises(ConfigError, match=r"outside|not a valid subject token"):
        loader.load([{"id": 1}], bad)
    assert not (tmp_path / "out").exists()


def test_empty_batch_writes_nothing(tmp_path: Path) -> None:
    assert FileLoader(tmp_path).load([], ctx()) == 0
    assert files(tmp_path) == []


def test_bad_options_fail_at_start_up() -> None:
    with pytest.raises(ConfigError, match="unsupported format"):
        FileLoader("x", format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="field name"):
        FileLoader("x", partition_by="../day")
    with pytest.raises(ConfigError, match="not a field of Sale"):
        FileLoader("x", partition_by="region").check_schema(Sale)


def test_check_fails_when_the_root_is_a_file(tmp_path: Path) -> None:
    assert FileLoader(tmp_path / "out").check(JetlSettings()) == Check("ok", f"file://{(tmp_path / 'out').resolve()}")
    (tmp_path / "taken").write_text("not a folder")
    assert FileLoader(tmp_path / "taken").check(JetlSettings()) == Check(
        "error", f"{tmp_path / 'taken'} is a file, not a folder"
    )


def test_a_primary_key_merges_on_read_the_highest_version_wins(tmp_path: Path) -> None:
    from jetl import ConsoleLoader, Pipeline
    from jetl.extractors.file import FileExtractor

    class Keyed(BaseModel):
        id: int
        at: str
        note: str

    loader = FileLoader(tmp_path / "out")
    Pipeline(
        name="kp",
        extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
        loader=loader,
        schema=Keyed,
        primary_key=["id"],
    )
    assert loader.key == ["id"]
    first = [{"id": i, "at": f"2025-01-0{i}", "note": "v0"} for i in (1, 2, 3)]
    # the later run's batch lands first (a replay of r1, a redelivery): the higher version still wins
    loader.load(
        [{"id": 2, "at": "2025-01-05", "note": "v1"}],
        LoadContext(pipeline="kp", run_id="r2", batch_id=batch_id("r2", 0), version=log_version(2)),
    )
    loader.load(first, LoadContext(pipeline="kp", run_id="r1", batch_id=batch_id("r1", 0), version=log_version(1)))
    assert len(loader.read_all("kp")) == 4  # the parts stay as written: lineage and replay work as before
    assert sorted((r["id"], r["note"]) for r in loader.read_merged("kp")) == [(1, "v0"), (2, "v1"), (3, "v0")]
    assert loader.distinct_keys("kp") == 3
    assert loader.max_position("kp", "at", "id") == ("2025-01-05", 2)
    plain = FileLoader(tmp_path / "plain")
    Pipeline(name="kp", extractors=[FileExtractor(str(tmp_path / "*.jsonl"))], loader=plain, schema=Keyed)
    plain.load(first + first, LoadContext(pipeline="kp", run_id="r1", batch_id=batch_id("r1", 0), version=8))
    assert len(plain.read_merged("kp")) == 6 and plain.distinct_keys("kp") == 6  # append mode: every copy
    with pytest.raises(ConfigError, match="cannot keep one row per key"):
        Pipeline(
            name="kp",
            extractors=[FileExtractor(str(tmp_path / "*.jsonl"))],
            loader=ConsoleLoader(),
            schema=Keyed,
            primary_key=["id"],
        )
