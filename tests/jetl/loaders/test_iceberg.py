"""IcebergLoader (pyiceberg, a SQLite SQL catalog and a warehouse folder): the loader and versioned-loader
contracts, a redelivery skipped by the token in the snapshot summary, replays by lineage, a shadow diff, and the
table read back by other engines (pyarrow and DuckDB over the Parquet files Iceberg's metadata lists)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydantic import BaseModel

from jetl import IcebergLoader
from jetl.messages.ids import batch_id
from jetl.protocols import LoadContext, Loader, Record, WriteSpec, log_version
from jetl.testing.contracts import LineageLoaderContract, LoaderContract, VersionedLoaderContract

pytest.importorskip("pyiceberg")


class Row(BaseModel):
    id: int
    name: str
    day: date


ROWS = [{"id": i, "name": f"r{i}", "day": date(2026, 11, 25 + i % 2)} for i in range(6)]


class TestIcebergLoaderContract(LoaderContract):
    @pytest.fixture
    def loader(self, tmp_path: Path) -> Loader:
        return IcebergLoader("contract", warehouse=tmp_path / "wh")

    @pytest.fixture
    def records(self) -> list[Record]:
        return [dict(r) for r in ROWS]

    @pytest.fixture
    def schema(self) -> type[BaseModel]:
        return Row

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        assert isinstance(loader, IcebergLoader)
        return loader.count()


class TestIcebergVersioned(VersionedLoaderContract):
    max_examples = 4  # every batch is an Iceberg commit (metadata files written and read back)

    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path

    def new_loader(self, spec: WriteSpec, name: str) -> Loader:
        return IcebergLoader(name, warehouse=self.root / "wh")


class TestIcebergLineage(LineageLoaderContract):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path

    def new_loader(self, name: str) -> Loader:
        return IcebergLoader(name, warehouse=self.root / "wh")


def _ctx(run: str, seq: int, version: int | None = None) -> LoadContext:
    return LoadContext("p", run, batch_id(run, seq), schema=Row, version=version)


def test_replay_redelivery_diff_and_another_engine_reads_the_table(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    loader = IcebergLoader("orders", warehouse=tmp_path / "wh")
    loader.check_schema(Row)
    loader.load([dict(r) for r in ROWS], _ctx("r1", 0, log_version(1)))
    loader.load([dict(r) for r in ROWS], _ctx("r1", 0, log_version(1)))  # redelivered: its token is in a snapshot
    assert loader.count() == len(ROWS)
    changed = [dict(r) for r in ROWS[:5]]
    changed[0]["name"] = "changed"
    loader.shadow("r1x").load(changed, _ctx("r1x", 0, log_version(1)))
    d = loader.diff("p", "r1", "r1x")
    assert (d.added, d.removed, d.unchanged) == (1, 2, 4)
    assert d.columns == {"name": 1}
    loader.drop_shadow("p", "r1x")
    loader.load(changed, _ctx("r1y", 0, log_version(1)))  # a replay, then its parent's batch removed
    loader.remove_batch("p", batch_id("r1", 0))
    assert loader.rows_by_run("p") == {"r1y": 5}
    # another engine: pyarrow reads the Parquet files the table's current snapshot lists
    files = loader.data_files()
    assert files
    rows = [r for f in files for r in pq.read_table(f.removeprefix("file://")).to_pylist()]
    assert sorted((r["id"], r["name"]) for r in rows) == sorted((r["id"], r["name"]) for r in changed)
    duckdb = pytest.importorskip("duckdb")  # and DuckDB, over the same files
    paths = [f.removeprefix("file://") for f in files]
    got = duckdb.sql(f"SELECT id, name FROM read_parquet({paths!r}) ORDER BY id").fetchall()
    assert got == sorted((r["id"], r["name"]) for r in changed)


def test_two_replicas_racing_for_the_same_batches_append_each_once(tmp_path: Path) -> None:
    """Two loaders on one catalog (as two replicas) each given every batch at once: a commit that loses the race
    looks again and finds the batch's token, so each batch is appended once."""
    from concurrent.futures import ThreadPoolExecutor

    replicas = [IcebergLoader("orders", warehouse=tmp_path / "wh") for _ in range(2)]
    for r in replicas:
        r.check_schema(Row)
    replicas[0].load([dict(ROWS[0])], _ctx("r0", 0))  # the table exists before the race
    jobs = [(replicas[i % 2], seq) for seq in range(6) for i in range(2)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: job[0].load([dict(r) for r in ROWS], _ctx("r1", job[1])), jobs))
    assert replicas[1].rows_by_run("p") == {"r0": 1, "r1": 6 * len(ROWS)}
