"""Versions, dispositions and deletes: the destination contract (`VersionedLoaderContract`) for the file loader
(merge on read) and ClickHouse (chdb: ReplacingMergeTree on the version), including the property test over any
interleaving of runs, replays, redeliveries and deletes, in each disposition."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jetl import ClickHouseLoader, FileLoader
from jetl.loaders.clickhouse import close_clients
from jetl.protocols import Loader, VersionedLoader, WriteSpec
from jetl.testing.contracts import Delivery, VersionedLoaderContract


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


class TestFileLoaderParquetPartitioned(TestFileLoaderJsonl):
    max_examples = 10  # typed columns, and rows spread over partition folders by value

    def new_loader(self, spec: WriteSpec, name: str) -> Loader:
        return FileLoader(self.root / name, format="parquet", partition_by="value")


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


class TestClickHouseMergedAfterEveryBatch(TestClickHouse):
    """The same suite with the table merged (`OPTIMIZE ... FINAL`) after every delivery: the background merges a
    busy server may run at any moment, run at every moment. A merge folds the copies of one version into one, so
    which copy survives (and what a later `remove_batch` then takes away) must never depend on when merges run."""

    @staticmethod
    def deliver(loader: VersionedLoader, pipeline: str, d: Delivery) -> None:
        VersionedLoaderContract.deliver(loader, pipeline, d)
        assert isinstance(loader, ClickHouseLoader)
        loader.client().command(f"OPTIMIZE TABLE {loader.qualified} FINAL")


def test_the_run_view_knows_replays_incomplete_runs_and_attempts_a_later_run_read_again() -> None:
    from datetime import UTC, datetime, timedelta

    from jetl.loaders.versions import run_view
    from jetl.projection import RunState

    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    def state(run_id: str, status: str, minutes: int, **kw: object) -> RunState:
        return RunState(pipeline="p", run_id=run_id, status=status, requested_at=t0 + timedelta(minutes=minutes), **kw)

    cursor = {"value": "2026-11-30", "key": 7}
    view = run_view(
        [
            state("a", "failed", 0),  # a slot's first attempt, retried
            state("a-retry0", "failed", 1),
            state("a-retry1", "completed", 2),
            state("b", "failed", 3, start_cursor=cursor),  # an incremental run that failed (or was cancelled) ...
            state("c", "running", 4, start_cursor=cursor),  # ... and the next one, from the same cursor
            state("d", "failed", 5),  # nothing read its input again: its rows stay
            state("a-retry1x", "completed", 6, trigger="replay", parent_run_id="a-retry1"),
        ]
    )
    assert view.superseded == {"a", "a-retry0", "b"}
    assert view.parents == {"a-retry1x": "a-retry1"} and view.source("a-retry1x") == "a-retry1"
    assert view.incomplete == {"a", "a-retry0", "b", "c", "d"}


def test_a_pipeline_refuses_dispositions_it_cannot_write(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from jetl import ConsoleLoader, Deletes, Pipeline
    from jetl.errors import ConfigError
    from jetl.extractors.file import FileExtractor

    class Row(BaseModel):
        id: int
        op: str = "u"

    def make(**kw: object) -> Pipeline:
        loader = kw.pop("loader", FileLoader(tmp_path))
        return Pipeline(
            name="p", extractors=[FileExtractor(str(tmp_path / "*.jsonl"))], loader=loader, schema=Row, **kw
        )  # type: ignore[arg-type]

    assert make(primary_key=["id"]).write_spec.disposition == "merge"  # the default with a key
    assert make().write_spec.disposition == "append"
    assert make(primary_key=["id"], deletes=Deletes("op", "d")).write_spec.deletes == Deletes("op", "d")
    for kw, why in (
        ({"disposition": "merge"}, "needs a primary_key"),
        ({"disposition": "history"}, "needs a primary_key"),
        ({"disposition": "upsert", "primary_key": ["id"]}, "must be one of"),
        ({"deletes": "op"}, "apply to merge and history"),
        ({"primary_key": ["id"], "deletes": "gone"}, "not a field"),
        ({"primary_key": ["id"], "loader": ConsoleLoader()}, "cannot keep one row per key"),
        ({"disposition": "replace", "loader": ConsoleLoader()}, "replace"),
    ):
        with pytest.raises(ConfigError, match=why):
            make(**kw)


def test_a_table_made_before_versions_reads_its_rows_and_a_merge_over_it_is_refused(dsn: str) -> None:
    """An append table made by an earlier jetl (a plain MergeTree) is read without FINAL; a merge table without the
    version in its engine (the last insert would win) is refused with the statements that rebuild it."""
    from pydantic import BaseModel

    from jetl.errors import ConfigError
    from jetl.protocols import LoadContext

    class Row(BaseModel):
        id: int
        note: str

    old = ClickHouseLoader("old_append", dsn=dsn)
    old.client().command("CREATE TABLE old_append (id Int64, note String) ENGINE = MergeTree ORDER BY tuple()")
    old.client().command("INSERT INTO old_append VALUES (1, 'a'), (1, 'a')")
    old.check_schema(Row)
    assert [r["note"] for r in old.current_rows("p")] == ["a", "a"]  # read before this process loaded anything
    old.load([{"id": 2, "note": "b"}], LoadContext("p", "r1", "r1/000001", schema=Row, version=1 << 24))
    assert old.count_current("p") == 3
    rmt = ClickHouseLoader("old_merge", dsn=dsn)
    rmt.client().command("CREATE TABLE old_merge (id Int64, note String) ENGINE = ReplacingMergeTree ORDER BY id")
    rmt.write_as(WriteSpec("merge", ("id",)))
    rmt.check_schema(Row)
    with pytest.raises(ConfigError, match="Rebuild it as ReplacingMergeTree"):
        rmt.load([{"id": 2, "note": "b"}], LoadContext("p", "r1", "r1/000001", schema=Row, version=1 << 24))
