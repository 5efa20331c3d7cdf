"""Schema evolution as a user meets it, pipeline file in, rows out: a source adds a field mid-run, an int field turns
float, a field disappears, a string field receives objects. Under `evolve` every record lands, the table grows a
column, widens one and makes one nullable, each change a migration in `jetl_migrations`; under `freeze` the drifted
batches are held, and `jetl schema accept` releases them once the pipeline evolves. A run loaded before the pipeline
evolved is replayed from the archive, its input gone and JETL_RAW purged of it, and the new column is filled for its
rows. For the file loader, ClickHouse (chdb) and PostgreSQL; every ledger reconciles."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from jetl import subjects
from jetl.archive import Archive
from jetl.bus import connect
from jetl.cli import app
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.subjects import Kind
from jetl.testing import chdb
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = """
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, FileLoader, Pipeline, PostgresLoader, TypeTransformer

class Item(BaseModel):
    id: int
    name: str
    qty: int
    note: str | None = None

def register_pipelines():
    src = lambda: [FileExtractor("INPUT/*.jsonl")]
    loaders = {
        "files": lambda t: FileLoader("OUTPUT/" + t),
        "chdb": lambda t: ClickHouseLoader(t, order_by=["id"]),
        "pg": lambda t: PostgresLoader(t, dsn="DSN", schema="SCHEMA"),
    }
    out = []
    for kind, loader in loaders.items():
        out.append(Pipeline(name="ev_" + kind, extractors=src(), transformers=[TypeTransformer(Item)],
                            loader=loader("ev_items"), schema=Item, batch_size=10, schema_contract="evolve"))
        out.append(Pipeline(name="fz_" + kind, extractors=src(), transformers=[TypeTransformer(Item)],
                            loader=loader("fz_items"), schema=Item, batch_size=10, schema_contract=FROZEN))
    out.append(Pipeline(name="later", extractors=[FileExtractor("INPUT/b_*.jsonl")],
                        transformers=[TypeTransformer(Item)], loader=ClickHouseLoader("later_items"), schema=Item,
                        batch_size=10, primary_key=["id"], schema_contract=LATER))
    return out
"""

KINDS = ("files", "chdb", "pg")


def write_inputs(folder: Path) -> None:
    """a: 20 records as the model has them; b: 20 with a new field `color`; c: 10 whose qty is a float (3 of them
    2.5); d: 10 without `name`; e: 10 whose `note` (a string field) is an object."""
    folder.mkdir(parents=True)

    def put(name: str, recs: list[dict[str, Any]]) -> None:
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in recs))

    put("a_first.jsonl", [{"id": i, "name": f"n{i}", "qty": i} for i in range(1, 21)])
    put("b_color.jsonl", [{"id": i, "name": f"n{i}", "qty": i, "color": "red"} for i in range(21, 41)])
    put("c_float.jsonl", [{"id": i, "name": f"n{i}", "qty": 2.5 if i % 3 == 0 else i} for i in range(41, 51)])
    put("d_noname.jsonl", [{"id": i, "qty": i} for i in range(51, 61)])
    put("e_object.jsonl", [{"id": i, "name": f"n{i}", "qty": i, "note": {"k": i}} for i in range(61, 71)])


def expected() -> list[dict[str, Any]]:
    """Every record as evolve loads it: nothing lost, each value where its column is."""
    return [
        {
            "id": i,
            "name": None if 51 <= i <= 60 else f"n{i}",
            "qty": 2.5 if 41 <= i <= 50 and i % 3 == 0 else i,
            "note": f'{{"k":{i}}}' if i > 60 else None,
            "color": "red" if 21 <= i <= 40 else None,
        }
        for i in range(1, 71)
    ]


EVOLUTIONS = {"add_color", "widen_qty", "nullable_name"}
"""What the drift above makes of the table: one migration each (the object in a text field changes nothing)."""


def cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None


@pytest.fixture
def pg(pg_url: str) -> Iterator[tuple[str, str]]:
    """(libpq DSN, a schema of this test's own), the schema dropped afterwards."""
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    schema = f"jetl_evolve_{uuid.uuid4().hex[:10]}"
    yield dsn, schema
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def rows_of(kind: str, table: str, *, output: Path, data: Path, pg: tuple[str, str]) -> list[dict[str, Any]]:
    """The table's rows (the file loader's: every part's records), by id, as the five columns."""
    cols = ("id", "name", "qty", "note", "color")
    if kind == "files":
        found = [json.loads(line) for p in (output / table).rglob("*.jsonl") for line in p.read_text().splitlines()]
        rows = [{c: r.get(c) for c in cols} for r in found]
    elif kind == "chdb":
        rows = chdb.query(data / "chdb", f"SELECT {', '.join(cols)} FROM {table} ORDER BY id")
    else:
        dsn, schema = pg
        with psycopg.connect(dsn) as conn:
            cur = conn.execute(f'SELECT {", ".join(cols)} FROM "{schema}".{table} ORDER BY id')
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return sorted(rows, key=lambda r: r["id"])


def migrations_of(kind: str, table: str, *, data: Path, pg: tuple[str, str]) -> list[tuple[int, str]]:
    """(version, name) of the evolution migrations of `table` in the destination's history."""
    if kind == "chdb":
        got = chdb.query(data / "chdb", "SELECT version, name FROM jetl_migrations ORDER BY version")
        found = [(int(r["version"]), str(r["name"])) for r in got]
    else:
        dsn, schema = pg
        with psycopg.connect(dsn) as conn:
            cur = conn.execute(f'SELECT version, name FROM "{schema}".jetl_migrations ORDER BY version')
            found = [(int(v), str(n)) for v, n in cur.fetchall()]
    return [(v, n) for v, n in found if n.startswith(f"evolve_{table}__")]


def changes(migrations: list[tuple[int, str]]) -> set[str]:
    return {c for _, n in migrations for c in n.split("__")[1:]}


async def settled(jc: JetlClient, name: str, run_id: str, total: int) -> RunState:
    """The run once each of its records is loaded, rejected or filtered (a frozen run fails at its first held
    batch, before the others settle)."""
    await jc.wait(name, run_id, timeout=300)
    async for _ in jc.follow(name, run_id):
        st = await jc.run_state(name, run_id)
        if st is not None and st.loaded + st.rejected + st.filtered == total:
            return st
    raise AssertionError("the event log ended")


async def only_in_archive(url: str, folder: str, pipeline: str, run_id: str, batches: int) -> int:
    """Once the archive keeps the run's raw batches, purge them from JETL_RAW (as its limits would in time): a replay
    then reads the archive. Returns the batches archived."""
    archive = Archive(folder)
    deadline = asyncio.get_running_loop().time() + 120
    while len(archive.batches(pipeline, run_id)) < batches:  # the archiver acks beside the loader: it may lag
        assert asyncio.get_running_loop().time() < deadline, archive.batches(pipeline, run_id)
        await asyncio.sleep(0.1)
    nc = await connect(NatsSettings(url=url))
    try:
        js = nc.jetstream()
        subject = subjects.raw(pipeline, run_id)
        await js.purge_stream(subjects.stream_name(Kind.RAW), subject=subject)
        info = await js.stream_info(subjects.stream_name(Kind.RAW), subjects_filter=subject)
        assert not (info.state.subjects or {}).get(subject)
    finally:
        await nc.close()
    return len(archive.batches(pipeline, run_id))


def test_evolve_and_freeze_then_accept_and_replay(
    tmp_path: Path, nats: NatsHandle, pg: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, output, pipelines, data = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines", tmp_path / "data"
    write_inputs(inputs)
    pipelines.mkdir()
    dsn, schema = pg

    def write(frozen: str, later: str) -> None:
        text = PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(output))
        text = text.replace("DSN", dsn).replace("SCHEMA", schema)
        (pipelines / "items_pipeline.py").write_text(text.replace("FROZEN", frozen).replace("LATER", later))

    monkeypatch.setenv("JETL_NATS__URL", nats.url)
    monkeypatch.setenv("JETL_PIPELINES_DIR", str(pipelines))
    names = [f"{mode}_{kind}" for mode in ("ev", "fz") for kind in KINDS]

    # 1. evolve and freeze side by side; `later` loads b's 20 records with no contract (color is dropped)
    write('"freeze"', "None")

    async def first() -> dict[str, RunState]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            reqs = {name: await jc.request_run(name) for name in [*names, "later"]}
            return {name: await settled(jc, name, r.run_id, 20 if name == "later" else 70) for name, r in reqs.items()}

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        states = asyncio.run(first())
        stack.check()
        refused = cli("schema", "accept", "fz_files", "--json")  # the model still freezes: nothing released
        counts = {name: cli("counts", name, "--json") for name in states}
        status = cli("status", "ev_chdb", "--json")
        audit = cli("audit", states["ev_pg"].run_id, "--pipeline", "ev_pg", "--json")

    for kind in KINDS:
        ev, fz = states[f"ev_{kind}"], states[f"fz_{kind}"]
        assert ev.status == "completed" and ev.reconciles, (kind, ev.error)
        assert (ev.extracted, ev.loaded, ev.rejected, ev.filtered) == (70, 70, 0, 0), kind
        assert rows_of(kind, "ev_items", output=output, data=data, pg=pg) == expected(), kind
        assert fz.status == "failed" and fz.error is not None and "schema contract freeze held batch" in fz.error
        assert (fz.extracted, fz.loaded, fz.rejected) == (70, 20, 50) and fz.reconciles, kind
    for kind in ("chdb", "pg"):
        migrations = migrations_of(kind, "ev_items", data=data, pg=pg)
        assert changes(migrations) == EVOLUTIONS and len(migrations) == 3, (kind, migrations)
        assert [v for v, _ in migrations] == [1_000_000, 1_000_001, 1_000_002], (kind, migrations)
    code, runs = status  # what evolve changed shows beside the drift, in status and audit
    assert code == 0 and runs[0]["evolved"] == ["color text", "name nullable", "qty float"], runs
    code, timeline = audit
    assert code == 0 and len(timeline["evolved"]) == 3, timeline["evolved"]
    assert sum(len(e["statements"]) for e in timeline["evolved"]) == 4  # add; alter type + drop not null; drop not null
    code, out = refused
    assert code == 1 and out["released"] == [] and len(out["refused"]) == 5 and out["run"] is None
    assert any("new field 'color'" in r["reason"] for r in out["refused"])
    later = states["later"]
    assert later.status == "completed" and later.loaded == 20
    for name, (code, ledger) in counts.items():
        assert code == 0 and ledger["verdict"]["mismatched_runs"] == [], (name, ledger)

    # 2. the pipelines evolve now; the source is gone. Accept releases what freeze held; a replay of `later`'s run
    # fills the new column from the raw log: from the archive, once JETL_RAW no longer holds the run
    write('"evolve"', '"evolve"')
    shutil.rmtree(inputs)
    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        archived = asyncio.run(only_in_archive(nats.url, str((data / "archive").resolve()), "later", later.run_id, 2))
        accepted = {kind: cli("schema", "accept", f"fz_{kind}", "--json") for kind in KINDS}
        again = cli("schema", "accept", "fz_files", "--json")
        replayed = cli("replay", "later", "--run", later.run_id, "--json")
        stack.check()
        counts = {name: cli("counts", name, "--json") for name in [*names, "later"]}
        status = cli("status", "fz_chdb", "--json")

    for kind in KINDS:
        code, out = accepted[kind]
        assert code == 0, (kind, out)
        assert len(out["released"]) == 5 and out["refused"] == []
        run = out["run"]
        assert run["status"] == "completed" and run["loaded"] == 50, (kind, run)
        assert rows_of(kind, "fz_items", output=output, data=data, pg=pg) == expected(), kind
    assert again[0] == 0 and again[1]["released"] == [] and again[1]["run"] is None  # nothing released twice
    for kind in ("chdb", "pg"):
        assert changes(migrations_of(kind, "fz_items", data=data, pg=pg)) == EVOLUTIONS, kind
        assert len(migrations_of(kind, "ev_items", data=data, pg=pg)) == 3, kind  # nothing evolved twice
    for name, (code, ledger) in counts.items():
        assert code == 0 and ledger["verdict"]["mismatched_runs"] == [], (name, ledger)
    code, runs = status
    assert code == 0 and any("new color" in r.get("drift", []) for r in runs), runs

    code, out = cli("migrate", "--status", "--postgres", dsn, "--schema", schema, "--json")
    assert code == 0, out
    evolved = [(m["name"], m["state"]) for m in out["migrations"] if m["name"].startswith("evolve_ev_items")]
    assert len(evolved) == 3 and {state for _, state in evolved} == {"evolved"}

    assert archived == 2
    code, out = replayed
    assert code == 0 and out["status"] == "completed", out
    got = chdb.query(data / "chdb", "SELECT id, color FROM later_items FINAL ORDER BY id")
    assert got == [{"id": i, "color": "red"} for i in range(21, 41)]
    assert changes(migrations_of("chdb", "later_items", data=data, pg=pg)) == {"add_color"}
