"""Versions, dispositions and deletes: the destination contract (`VersionedLoaderContract`) for the file loader
(merge on read) and ClickHouse (chdb: ReplacingMergeTree on the version), including the property test over any
interleaving of runs, replays, redeliveries and deletes, in each disposition."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jetl import ClickHouseLoader, FileLoader
from jetl.loaders.clickhouse import close_clients
from jetl.protocols import Loader, WriteSpec
from jetl.testing.contracts import VersionedLoaderContract


class TestFileLoaderJsonl(VersionedLoaderContract):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path

    def new_loader(self, spec: WriteSpec, name: str) -> Loader:
        return FileLoader(self.root / name)


class TestFileLoaderCsv(TestFileLoaderJsonl):
    max_examples = 15  # CSV reads every value back as text: the same merge, read through the text

    def new_loader(self, spec: WriteSpec, name: str) -> Loader:
        return FileLoader(self.root / name, format="csv")


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    close_clients()  # another module may have left its chdb folder open in this process
    yield f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}"
    close_clients()


class TestClickHouse(VersionedLoaderContract):
    max_examples = 8  # each example is a fresh table in chdb

    @pytest.fixture(autouse=True)
    def _dsn(self, dsn: str) -> None:
        self.dsn = dsn

    def new_loader(self, spec: WriteSpec, name: str) -> Loader:
        return ClickHouseLoader(name, dsn=self.dsn)
