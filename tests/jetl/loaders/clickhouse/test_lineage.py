"""ClickHouseLoader lineage on chdb: rows know their batch, a replayed batch supersedes its parent's, a shadow
table is diffed against exactly the rows the parent run loaded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from jetl import ClickHouseLoader, LoadContext
from jetl.loaders.clickhouse import close_clients
from jetl.messages.ids import batch_id
from jetl.protocols import LineageLoader


class Row(BaseModel):
    id: int
    v: str


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    close_clients()  # another module may have left its chdb folder open in this process
    yield f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}"
    close_clients()


def loader(dsn: str, **kw: object) -> ClickHouseLoader:
    ld = ClickHouseLoader(f"t_{uuid.uuid4().hex[:10]}", **kw)  # type: ignore[arg-type]
    ld.check_schema(Row)
    ld.open(dsn)
    return ld


def load(ld: ClickHouseLoader, run: str, seq: int, rows: list[dict[str, object]]) -> None:
    ld.load(rows, LoadContext(pipeline="p", run_id=run, batch_id=batch_id(run, seq), schema=Row))


def rows(ld: ClickHouseLoader, table: str | None = None) -> list[tuple[object, ...]]:
    name = table or ld.table
    return [tuple(r) for r in ld.client().query(f"SELECT id, v FROM `{name}` ORDER BY id").result_rows]


def test_rows_carry_their_batch_and_count_by_run(dsn: str) -> None:
    ld = loader(dsn, order_by=["id"])
    assert isinstance(ld, LineageLoader)
    load(ld, "r1", 0, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
    load(ld, "r1", 0, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])  # redelivered: dedup token
    load(ld, "r2", 0, [{"id": 3, "v": "c"}])
    assert ld.rows_by_run("p") == {"r1": 2, "r2": 1}
    assert ld.count() == 3


def test_a_replayed_batch_supersedes_its_parent_batch(dsn: str) -> None:
    ld = loader(dsn, order_by=["id"])
    load(ld, "r1", 0, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
    load(ld, "r1", 1, [{"id": 3, "v": "c"}])
    for _ in range(2):  # a redelivery does the same again: one copy, parent batch gone
        load(ld, "r1-replay", 0, [{"id": 1, "v": "A"}])
        ld.remove_batch("p", batch_id("r1", 0))
    assert rows(ld) == [(1, "A"), (3, "c")]
    assert ld.rows_by_run("p") == {"r1": 1, "r1-replay": 1}


def test_diff_of_a_shadow_against_the_parent_run(dsn: str) -> None:
    ld = loader(dsn, order_by=["id"])
    load(ld, "r0", 0, [{"id": 100, "v": "other run"}])
    load(ld, "r1", 0, [{"id": i, "v": f"v{i}"} for i in range(1, 6)])
    shadow = ld.shadow("r1-rp")
    assert isinstance(shadow, ClickHouseLoader)
    new = [{"id": i, "v": f"v{i}" if i != 2 else "changed"} for i in range(1, 8) if i != 4]
    shadow.load(new, LoadContext(pipeline="p", run_id="r1-rp", batch_id=batch_id("r1-rp", 0), schema=Row))
    assert ld.count() == 6  # the real table is untouched

    d = ld.diff("p", "r1", "r1-rp")
    assert (d.added, d.removed, d.changed, d.unchanged) == (2, 1, 1, 3)  # id 100 belongs to another run: not "removed"
    assert sorted(d.samples["added"]) == [6, 7] and d.samples["removed"] == [4] and d.samples["changed"] == [2]
    assert d.columns == {"v": 1}  # the changed column, with how many matched rows changed in it

    assert ld.has_shadow("p", "r1-rp") and not ld.has_shadow("p", "r9")
    ld.drop_shadow("p", "r1-rp")
    tables = ld.client().query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    assert shadow.table not in {t[0] for t in tables}
    assert not ld.has_shadow("p", "r1-rp")


def test_diff_without_a_key_matches_whole_rows(dsn: str) -> None:
    ld = loader(dsn)
    load(ld, "r1", 0, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 2, "v": "b"}])
    shadow = ld.shadow("r2")
    shadow.load([{"id": 1, "v": "a"}, {"id": 2, "v": "B"}], LoadContext("p", "r2", batch_id("r2", 0), Row))
    d = ld.diff("p", "r1", "r2")
    assert (d.added, d.removed, d.changed, d.unchanged) == (1, 2, 0, 1)


def test_shadow_table_names_are_one_to_one_with_run_ids() -> None:
    from jetl.loaders.clickhouse.lineage import shadow_table

    runs = ["a-b", "a_b", "a__b", "a_hb", "a-_b", "a_-b", "ab"]
    names = {shadow_table("t", r) for r in runs}
    assert len(names) == len(runs)
    assert all(n.startswith("t__shadow_") and n.replace("_", "").isalnum() for n in names)
