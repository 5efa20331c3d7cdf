"""PostgresLoader against the machine's PostgreSQL: the loader and versioned-loader contracts (every disposition,
replays, redeliveries, deletes, the property test), exactly once when two replicas race for one batch, lineage and
the shadow diff, schema checks, tables changed only by migrations, and `jetl migrate --postgres`.

Every test works in a schema of its own (`jetl_test_<random>`), dropped afterwards, so tests never collide."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel, Field

from jetl import PostgresLoader
from jetl.errors import ConfigError, TerminalError
from jetl.messages.ids import batch_id
from jetl.protocols import (
    VERSION,
    ArrowLoader,
    Deletes,
    LineageLoader,
    LoadContext,
    Loader,
    Record,
    VersionedLoader,
    WriteSpec,
    log_version,
)
from jetl.testing.cli import jetl
from jetl.testing.contracts import LineageLoaderContract, LoaderContract, VersionedLoaderContract

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_dsn(pg_url: str) -> str:
    """The session's PostgreSQL as a libpq URL (the fixture gives a SQLAlchemy one)."""
    return pg_url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, dropped afterwards."""
    name = f"jetl_test_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class Row(BaseModel):
    id: int
    name: str
    day: date


ROWS = [{"id": i, "name": f"r{i}", "day": date(2026, 11, 25 + i % 2)} for i in range(6)]


class TestPostgresLoaderContract(LoaderContract):
    @pytest.fixture
    def loader(self, pg_dsn: str, pg_schema: str) -> Loader:
        return PostgresLoader("contract", dsn=pg_dsn, schema=pg_schema)

    @pytest.fixture
    def records(self) -> list[Record]:
        return [dict(r) for r in ROWS]

    @pytest.fixture
    def schema(self) -> type[BaseModel]:
        return Row

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        assert isinstance(loader, PostgresLoader)
        return loader.count()


class TestPostgresVersioned(VersionedLoaderContract):
    max_examples = 15  # each example is a fresh table

    @pytest.fixture(autouse=True)
    def _where(self, pg_dsn: str, pg_schema: str) -> None:
        self.dsn, self.schema = pg_dsn, pg_schema

    def new_loader(self, spec: WriteSpec, name: str) -> Loader:
        return PostgresLoader(name, dsn=self.dsn, schema=self.schema)


class TestPostgresLineage(LineageLoaderContract):
    @pytest.fixture(autouse=True)
    def _where(self, pg_dsn: str, pg_schema: str) -> None:
        self.dsn, self.schema = pg_dsn, pg_schema

    def new_loader(self, name: str) -> Loader:
        return PostgresLoader(name, dsn=self.dsn, schema=self.schema)


def _ctx(run: str, seq: int, version: int | None = None, schema: type[BaseModel] = Row, **kw: Any) -> LoadContext:
    return LoadContext("p", run, batch_id(run, seq), schema=schema, version=version, **kw)


def test_two_replicas_racing_for_one_batch_load_it_once(pg_dsn: str, pg_schema: str) -> None:
    """Two loaders (as two replicas) given the same batch at once: one copy, and every other batch lands."""
    replicas = [PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema) for _ in range(2)]
    for r in replicas:
        r.check_schema(Row)
    jobs = [(replicas[i % 2], seq) for seq in range(20) for i in range(2)]  # every batch to both replicas
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: job[0].load([dict(r) for r in ROWS], _ctx("r1", job[1])), jobs))
    assert replicas[0].count() == 20 * len(ROWS)
    assert replicas[1].rows_by_run("p") == {"r1": 20 * len(ROWS)}


def test_a_batch_in_parts_loads_each_part_once_and_a_replay_removes_every_part(pg_dsn: str, pg_schema: str) -> None:
    loader = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    loader.check_schema(Row)
    for part in range(2):
        ctx = _ctx("r1", 0, log_version(1, 3 * part), part_id=f"{batch_id('r1', 0)}-part{part}")
        loader.load([dict(r) for r in ROWS[3 * part : 3 * part + 3]], ctx)
        loader.load([dict(r) for r in ROWS[3 * part : 3 * part + 3]], ctx)  # redelivered
    assert loader.count() == len(ROWS)
    loader.load([dict(r) for r in ROWS[:2]], _ctx("r1x", 0, log_version(1)))
    loader.remove_batch("p", batch_id("r1", 0))
    late = _ctx("r1", 0, log_version(1), part_id=f"{batch_id('r1', 0)}-part0")
    loader.load([dict(r) for r in ROWS[:3]], late)  # a late redelivery of the parent's part: already loaded
    assert loader.rows_by_run("p") == {"r1x": 2}


def test_merge_keeps_the_newest_version_and_query_reads_current_rows(pg_dsn: str, pg_schema: str) -> None:
    loader = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    loader.write_as(WriteSpec("merge", ("id",)))
    loader.check_schema(Row)
    loader.load([{"id": 1, "name": "new", "day": date(2026, 1, 2)}], _ctx("r2", 0, log_version(2)))
    loader.load([{"id": 1, "name": "old", "day": date(2026, 1, 1)}], _ctx("r1", 0, log_version(1)))
    assert loader.count() == 2
    assert loader.count_current("p") == 1
    assert [r["name"] for r in loader.current_rows("p")] == ["new"]
    cols, rows, truncated = loader.query("SELECT name FROM orders")
    assert (cols, rows, truncated) == (["name"], [["new"]], False)
    with pytest.raises(TerminalError):
        loader.query("DELETE FROM orders")
    with pytest.raises(TerminalError, match="read-only"):  # a read-only transaction: a write inside is refused too
        loader.query(f'WITH d AS (DELETE FROM "{pg_schema}".orders RETURNING 1) SELECT * FROM d', current=False)
    assert loader.count() == 2


def test_shadow_and_diff_by_key(pg_dsn: str, pg_schema: str) -> None:
    loader = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    loader.write_as(WriteSpec("merge", ("id",)))
    loader.check_schema(Row)
    loader.load([dict(r) for r in ROWS[:4]], _ctx("r1", 0, log_version(1)))
    shadow = loader.shadow("r1x")
    assert isinstance(loader, LineageLoader) and isinstance(loader, VersionedLoader)
    changed = [dict(r) for r in ROWS[1:5]]
    changed[0]["name"] = "changed"
    shadow.load(changed, _ctx("r1x", 0, log_version(1)))
    d = loader.diff("p", "r1", "r1x")
    assert (d.added, d.removed, d.changed, d.unchanged) == (1, 1, 1, 2)
    assert d.samples == {"added": [4], "removed": [0], "changed": [1]}
    assert d.columns == {"name": 1}
    assert loader.count() == 4  # the real table is untouched
    loader.drop_shadow("p", "r1x")
    loader.drop_shadow("p", "r1x")  # idempotent
    assert loader.shadow("r1x").load(changed, _ctx("r1x", 0, log_version(1))) == 4  # its loads were forgotten too


def test_diff_without_a_key_matches_whole_rows(pg_dsn: str, pg_schema: str) -> None:
    loader = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    loader.check_schema(Row)
    loader.load([dict(r) for r in ROWS[:3]], _ctx("r1", 0))
    other = [dict(r) for r in ROWS[:3]]
    other[2]["name"] = "x"
    loader.shadow("r1x").load(other, _ctx("r1x", 0))
    d = loader.diff("p", "r1", "r1x")
    assert (d.added, d.removed, d.unchanged) == (1, 1, 2)


class Kind(Enum):
    A = "a"


class Wide(BaseModel):
    id: int
    price: Decimal = Field(max_digits=10, decimal_places=2)
    kind: Kind
    tags: list[str]
    meta: dict[str, Any]
    note: str | None = None


def test_types_round_trip(pg_dsn: str, pg_schema: str) -> None:
    loader = PostgresLoader("wide", dsn=pg_dsn, schema=pg_schema)
    loader.check_schema(Wide)
    record = Wide(id=1, price=Decimal("9.99"), kind=Kind.A, tags=["x"], meta={"a": [1]}).model_dump()
    loader.load([record], _ctx("r1", 0, schema=Wide))
    (row,) = loader.current_rows("p")
    assert (row["price"], row["kind"], row["tags"], row["meta"], row["note"]) == (
        Decimal("9.99"),
        "a",
        ["x"],
        {"a": [1]},
        None,
    )


def test_schema_checks(pg_dsn: str, pg_schema: str) -> None:
    class Optional_(BaseModel):
        id: int | None = None

    loader = PostgresLoader("t", dsn=pg_dsn, schema=pg_schema)
    loader.write_as(WriteSpec("merge", ("id",)))
    with pytest.raises(ConfigError, match="may not be optional"):
        loader.check_schema(Optional_)
    loader.write_as(WriteSpec("merge", ("nope",)))
    with pytest.raises(ConfigError, match="not a field"):
        loader.check_schema(Row)
    with pytest.raises(ConfigError):
        PostgresLoader("t", dsn="mysql://x")


def test_a_table_changes_only_through_migrations(pg_dsn: str, pg_schema: str) -> None:
    """A model that grew a field does not alter the table: the load stops and names the migration to write."""
    loader = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    loader.check_schema(Row)
    loader.load([dict(r) for r in ROWS], _ctx("r1", 0))

    class Grown(Row):
        city: str

    grown = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    grown.check_schema(Grown)
    with pytest.raises(TerminalError, match=r"city.*migrations/postgres"):
        grown.load([{**r, "city": "x"} for r in ROWS], _ctx("r2", 0, schema=Grown))


def test_jetl_migrate_postgres_grows_the_table_then_the_grown_model_loads(
    pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """`jetl migrate --postgres`: each migration once, in one transaction with its record; a failing one leaves
    nothing behind; after the migration that adds the column, the grown model loads."""
    loader = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    loader.check_schema(Row)
    loader.load([dict(r) for r in ROWS], _ctx("r1", 0))
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_city.sql").write_text(f"ALTER TABLE \"{pg_schema}\".orders ADD COLUMN city text DEFAULT 'x';")

    def migrate(*args: str) -> Any:
        return jetl(
            "migrate",
            "--postgres",
            pg_dsn,
            "--schema",
            pg_schema,
            "--dir",
            str(folder),
            "--json",
            *args,
            nats_url="nats://127.0.0.1:1",
            pipelines_dir=tmp_path,
        )

    first = migrate()
    assert first.code == 0, first.stdout + first.stderr
    assert [m["name"] for m in json.loads(first.stdout)["migrations"]] == ["city"]
    assert json.loads(migrate().stdout)["migrations"] == []  # applied once

    class Grown(Row):
        city: str

    grown = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    grown.check_schema(Grown)
    assert grown.load([{**r, "city": "y"} for r in ROWS], _ctx("r2", 0, schema=Grown)) == len(ROWS)
    assert grown.count() == 2 * len(ROWS)

    (folder / "0002_broken.sql").write_text(
        f'ALTER TABLE "{pg_schema}".orders ADD COLUMN zip text; SELECT no_such_function();'
    )
    broken = migrate()
    assert broken.code != 0 and "0002_broken" in broken.stdout + broken.stderr
    status = json.loads(migrate("--status").stdout)
    assert [m["state"] for m in status["migrations"]] == ["applied", "pending"]
    with psycopg.connect(pg_dsn) as conn:  # its first statement was rolled back with it
        cols = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'orders'",
            (pg_schema,),
        ).fetchall()
    assert "zip" not in {c[0] for c in cols}


class Order(BaseModel):
    id: int
    ts: datetime
    note: str
    maybe: str | None = None
    amount: float
    deleted: bool = False


def test_arrow_batches_copy_as_csv_exactly_once(pg_dsn: str, pg_schema: str) -> None:
    """An Arrow batch (how batches travel to an ArrowLoader) lands value for value: awkward text, empty text apart
    from null, aware times; redelivered, it adds nothing; delete markers come from its column."""
    import pyarrow as pa

    from jetl.records import records_adapter

    loader = PostgresLoader("orders", dsn=pg_dsn, schema=pg_schema)
    loader.write_as(WriteSpec("merge", ("id",), Deletes("deleted")))
    loader.check_schema(Order)
    ts = datetime(2026, 12, 7, 3, 4, 5, 123456, tzinfo=UTC)
    rows = [
        {"id": 1, "ts": ts, "note": 'a, "quoted"\nline', "maybe": "", "amount": 1.5, "deleted": False},
        {"id": 2, "ts": ts, "note": "", "maybe": None, "amount": -0.25, "deleted": False},
        {"id": 3, "ts": ts, "note": "gone", "maybe": None, "amount": 0.0, "deleted": True},
    ]
    adapter = records_adapter(Order)
    table = pa.Table.from_pylist(rows, schema=adapter.arrow_schema)
    adapter.check_arrow(table)
    assert isinstance(loader, ArrowLoader)
    ctx = _ctx("r1", 0, log_version(1), schema=Order)
    assert loader.load_arrow(table, ctx) == 3
    assert loader.load_arrow(table, ctx) == 3  # redelivered
    assert loader.count() == 3
    got = [{k: r[k] for k in ("id", "ts", "note", "maybe", "amount")} for r in loader.current_rows("p")]
    assert got == [{k: r[k] for k in ("id", "ts", "note", "maybe", "amount")} for r in rows[:2]]
    assert [r[VERSION] for r in loader.current_rows("p")] == [log_version(1), log_version(1) + 1]


class Item(BaseModel):
    id: int
    name: str
    qty: int


def test_replicas_evolving_at_once_change_the_table_once_and_record_it_once(pg_dsn: str, pg_schema: str) -> None:
    """Four replicas handed the same evolution at once (`schema_contract="evolve"`): the table gains its column, widens
    and drops a NOT NULL once, one migration is recorded, and each replica then loads its rows under the evolved
    model; a narrower batch after that loads into the wider table, and nothing ever narrows it back."""
    from jetl.evolution import evolved_model

    evolution: dict[str, Any] = {"color": "text", "qty": "float", "name": "nullable"}
    model = evolved_model(Item, evolution)
    replicas = [PostgresLoader("items", dsn=pg_dsn, schema=pg_schema) for _ in range(4)]
    for r in replicas:
        r.check_schema(Item)
    replicas[0].load([{"id": 0, "name": "a", "qty": 1}], _ctx("r0", 0, schema=Item))

    def evolve_and_load(i: int) -> list[str]:
        applied = replicas[i].evolve(Item, evolution)
        replicas[i].load([{"id": i + 1, "name": None, "qty": 2.5, "color": "red"}], _ctx("r1", i, schema=model))
        return applied

    with ThreadPoolExecutor(4) as pool:
        applied = list(pool.map(evolve_and_load, range(4)))
    assert sorted(len(a) for a in applied) == [0, 0, 0, 4]  # add, alter type, drop not null (of qty), drop not null
    replicas[1].load([{"id": 9, "name": "b", "qty": 3}], _ctx("r2", 0, schema=Item))
    assert replicas[2].evolve(Item, {"qty": "bigint"}) == []  # a float column stays float
    with psycopg.connect(pg_dsn) as conn:
        history = conn.execute(f'SELECT version, name FROM "{pg_schema}".jetl_migrations').fetchall()
        types = dict(
            conn.execute(
                "SELECT column_name, data_type || ' ' || is_nullable FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'items'",
                (pg_schema,),
            ).fetchall()
        )
        rows = conn.execute(f'SELECT id, name, qty, color FROM "{pg_schema}".items ORDER BY id').fetchall()
    assert history == [(1_000_000, "evolve_items__add_color__widen_qty__nullable_name")]
    assert (types["color"], types["qty"], types["name"]) == ("text YES", "double precision YES", "text YES")
    assert rows == [(0, "a", 1.0, None), *((i, None, 2.5, "red") for i in range(1, 5)), (9, "b", 3.0, None)]
