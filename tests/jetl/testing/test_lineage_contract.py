"""The lineage contract (`jetl.testing.contracts.LineageLoaderContract`: rows by run, removing a batch, shadows
and their diff) for the file loader and ClickHouse (chdb); PostgreSQL and Iceberg run it in their own modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jetl import ClickHouseLoader, FileLoader
from jetl.loaders.clickhouse import close_clients
from jetl.protocols import Loader
from jetl.testing.contracts import LineageLoaderContract


class TestFileLoaderLineage(LineageLoaderContract):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path

    def new_loader(self, name: str) -> Loader:
        return FileLoader(self.root / name)


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    close_clients()  # another module may have left its chdb folder open in this process
    yield f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}"
    close_clients()


class TestClickHouseLineage(LineageLoaderContract):
    @pytest.fixture(autouse=True)
    def _dsn(self, dsn: str) -> None:
        self.dsn = dsn

    def new_loader(self, name: str) -> Loader:
        return ClickHouseLoader(name, dsn=self.dsn)
