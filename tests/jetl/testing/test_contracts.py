"""Every built-in connector passes the contract suite of its protocol (jetl.testing.contracts)."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from jetl import (
    ClickHouseLoader,
    ColumnTransformer,
    ConsoleLoader,
    DedupeTransformer,
    FileExtractor,
    FileLoader,
    FilterTransformer,
    LambdaTransformer,
    TypeTransformer,
)
from jetl.loaders.clickhouse import close_clients
from jetl.protocols import Extractor, LoadContext, Loader, Record, Transformer
from jetl.testing.contracts import ExtractorContract, LoaderContract, TransformerContract

# -- extractors -----------------------------------------------------------------------------------------------

SAMPLE = [{"id": i, "name": f"n{i}"} for i in range(23)]


class TestFileExtractorJsonl(ExtractorContract):
    max_chunk_size = 5

    @pytest.fixture
    def extractor(self, tmp_path: Path) -> Extractor:
        (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in SAMPLE)))
        return FileExtractor(tmp_path / "*.jsonl.gz", chunk_size=5)

    @pytest.fixture
    def expected_records(self) -> int:
        return len(SAMPLE)

    @pytest.fixture
    def malformed_extractor(self, tmp_path: Path) -> Extractor:
        (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{"id": \n')
        return FileExtractor(tmp_path / "bad.jsonl")


class TestFileExtractorCsv(ExtractorContract):
    max_chunk_size = 4

    @pytest.fixture
    def extractor(self, tmp_path: Path) -> Extractor:
        (tmp_path / "a.csv").write_text("id,name\n" + "".join(f"{r['id']},{r['name']}\n" for r in SAMPLE))
        return FileExtractor(tmp_path, chunk_size=4, csv_types={"id": int})

    @pytest.fixture
    def expected_records(self) -> int:
        return len(SAMPLE)

    @pytest.fixture
    def malformed_extractor(self, tmp_path: Path) -> Extractor:
        (tmp_path / "bad.csv").write_text("id,name\n1,a\n2\n")
        return FileExtractor(tmp_path / "bad.csv")


class TestFileExtractorParquet(ExtractorContract):
    max_chunk_size = 10

    @pytest.fixture
    def extractor(self, tmp_path: Path) -> Extractor:
        pq.write_table(pa.Table.from_pylist(SAMPLE), tmp_path / "a.parquet", row_group_size=7)
        return FileExtractor(tmp_path / "a.parquet", chunk_size=10)

    @pytest.fixture
    def expected_records(self) -> int:
        return len(SAMPLE)

    @pytest.fixture
    def malformed_extractor(self, tmp_path: Path) -> Extractor:
        (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really")
        return FileExtractor(tmp_path / "bad.parquet")


# -- transformers ---------------------------------------------------------------------------------------------


class Person(BaseModel):
    id: int
    name: str
    born: date


PEOPLE = [{"id": i, "name": f"p{i % 3}", "born": f"199{i}-01-0{i + 1}"} for i in range(5)]


class _People:
    @pytest.fixture
    def records(self) -> list[Record]:
        return [dict(r) for r in PEOPLE]


class TestTypeTransformer(_People, TransformerContract):
    @pytest.fixture
    def transformer(self) -> Transformer:
        return TypeTransformer(Person)

    @pytest.fixture
    def bad_records(self) -> list[Record]:
        return [*PEOPLE[:2], {"id": "x", "name": "bad", "born": "1990-01-01"}, PEOPLE[3]]


def _shout(r: Record) -> Record:
    if r["id"] == 99:
        raise ValueError("no 99")
    return {**r, "name": r["name"].upper()}


class TestLambdaTransformer(_People, TransformerContract):
    @pytest.fixture
    def transformer(self) -> Transformer:
        return LambdaTransformer(_shout)

    @pytest.fixture
    def bad_records(self) -> list[Record]:
        return [PEOPLE[0], {"id": 99, "name": "x"}, PEOPLE[1]]


class TestColumnTransformer(_People, TransformerContract):
    @pytest.fixture
    def transformer(self) -> Transformer:
        return ColumnTransformer(
            rename={"name": "label"}, add={"source": "crm"}, compute={"initial": lambda r: r["label"][0]}, drop=["born"]
        )

    @pytest.fixture
    def bad_records(self) -> list[Record]:
        return [PEOPLE[0], {"id": 7, "name": "", "born": None}]


class TestFilterTransformer(_People, TransformerContract):
    @pytest.fixture
    def transformer(self) -> Transformer:
        return FilterTransformer(lambda r: r["name"] != "p0")

    @pytest.fixture
    def bad_records(self) -> list[Record]:
        return [PEOPLE[1], {"id": 8}, PEOPLE[2]]


class TestDedupeTransformer(_People, TransformerContract):
    @pytest.fixture
    def transformer(self) -> Transformer:
        return DedupeTransformer(key=["name"], keep="last")

    @pytest.fixture
    def bad_records(self) -> list[Record]:
        return [PEOPLE[0], {"id": 9}, PEOPLE[3], PEOPLE[1]]


# -- loaders --------------------------------------------------------------------------------------------------


class Row(BaseModel):
    id: int
    name: str
    day: date


ROWS = [{"id": i, "name": f"r{i}", "day": date(2026, 11, 25 + i % 2)} for i in range(6)]


class _Rows:
    @pytest.fixture
    def records(self) -> list[Record]:
        return [dict(r) for r in ROWS]

    @pytest.fixture
    def schema(self) -> type[BaseModel]:
        return Row


@pytest.fixture(scope="module")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One chdb folder for this module (chdb opens one folder per process); freed when the module is done."""
    close_clients()
    yield f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}"
    close_clients()


class TestClickHouseLoader(_Rows, LoaderContract):
    @pytest.fixture
    def loader(self, chdb_dsn: str) -> Loader:
        return ClickHouseLoader(f"contract_{uuid.uuid4().hex[:10]}", dsn=chdb_dsn, order_by=["id"])

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        assert isinstance(loader, ClickHouseLoader)
        return loader.count()


class TestClickHouseLoaderMerge(_Rows, LoaderContract):
    @pytest.fixture
    def loader(self, chdb_dsn: str) -> Loader:
        return ClickHouseLoader(f"contract_{uuid.uuid4().hex[:10]}", dsn=chdb_dsn, order_by=["id"], mode="merge")

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        assert isinstance(loader, ClickHouseLoader)
        return loader.count()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
class TestFileLoader(_Rows, LoaderContract):
    @pytest.fixture
    def loader(self, tmp_path: Path, fmt: Any) -> Loader:
        return FileLoader(tmp_path, format=fmt)

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        assert isinstance(loader, FileLoader)
        return len(loader.read_all(ctx.pipeline))


class TestFileLoaderPartitioned(_Rows, LoaderContract):
    @pytest.fixture
    def loader(self, tmp_path: Path) -> Loader:
        return FileLoader(tmp_path, format="parquet", partition_by="day")

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        assert isinstance(loader, FileLoader)
        return len(loader.read_all(ctx.pipeline))


class TestConsoleLoader(_Rows, LoaderContract):
    @pytest.fixture
    def loader(self) -> Loader:
        return ConsoleLoader(style="jsonl", max_rows=None, file=io.StringIO())

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        assert isinstance(loader, ConsoleLoader) and isinstance(loader.file, io.StringIO)
        return len(loader.file.getvalue().splitlines())
