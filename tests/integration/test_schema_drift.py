"""Schema drift as a user meets it: a source adds a field mid-run, an int field turns float, a field disappears.
The transformer says so in `schema.drift` events; `jetl schema diff`, `jetl status` and `jetl audit` report it, for
the file loader and ClickHouse (chdb) alike, and the ledger still reconciles."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jetl.cli import app
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.testing import chdb
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = """
from pydantic import BaseModel
from jetl import ClickHouseLoader, FileExtractor, FileLoader, Pipeline, TypeTransformer

class Item(BaseModel):
    id: int
    name: str
    qty: int
    note: str | None = None
"""

PIPELINE = (
    MODEL
    + """
def register_pipelines():
    return [
        Pipeline(name="drift_files", extractors=[FileExtractor("INPUT/*.jsonl")], transformers=[TypeTransformer(Item)],
                 loader=FileLoader("OUTPUT"), schema=Item, batch_size=10),
        Pipeline(name="drift_chdb", extractors=[FileExtractor("INPUT/*.jsonl")], transformers=[TypeTransformer(Item)],
                 loader=ClickHouseLoader("drift_items", order_by=["id"]), schema=Item, batch_size=10),
        Pipeline(name="steady", extractors=[FileExtractor("INPUT/a_*.jsonl")], transformers=[TypeTransformer(Item)],
                 loader=FileLoader("OUTPUT"), schema=Item, batch_size=10),
    ]
"""
)


def write_inputs(folder: Path) -> None:
    """a: 20 records as the model has them; b: 20 with a new field `color`; c: 10 whose qty is a float (3 of them
    2.5, which no int takes); d: 10 without `name`."""
    folder.mkdir(parents=True)

    def put(name: str, recs: list[dict[str, Any]]) -> None:
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in recs))

    put("a_first.jsonl", [{"id": i, "name": f"n{i}", "qty": i} for i in range(1, 21)])
    put("b_color.jsonl", [{"id": i, "name": f"n{i}", "qty": i, "color": "red"} for i in range(21, 41)])
    put("c_float.jsonl", [{"id": i, "name": f"n{i}", "qty": 2.5 if i % 3 == 0 else i} for i in range(41, 51)])
    put("d_noname.jsonl", [{"id": i, "qty": i} for i in range(51, 61)])


def cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, json.loads(result.stdout)


def cli_text(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


def test_drift_is_detected_and_reported(tmp_path: Path, nats: NatsHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, output, pipelines, data = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines", tmp_path / "data"
    write_inputs(inputs)
    pipelines.mkdir()
    (pipelines / "drift_pipeline.py").write_text(PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(output)))

    async def run_all() -> dict[str, RunState]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            reqs = {name: await jc.request_run(name) for name in ("drift_files", "drift_chdb", "steady")}
            return {name: await jc.wait(name, r.run_id, timeout=120) for name, r in reqs.items()}

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        states = asyncio.run(run_all())
        stack.check()
        monkeypatch.setenv("JETL_NATS__URL", nats.url)
        diffs = {name: cli("schema", "diff", name, "--json") for name in states}
        one_run = cli("schema", "diff", "drift_files", "--run", states["drift_files"].run_id, "--json")
        other_run = cli("schema", "diff", "drift_files", "--run", "drift_files-none", "--json")
        status = cli("status", "drift_files", "--json")
        audit = cli("audit", states["drift_chdb"].run_id, "--pipeline", "drift_chdb", "--json")
        texts = [
            cli_text("schema", "diff", "drift_files"),
            cli_text("status", "drift_files"),
            cli_text("audit", states["drift_files"].run_id, "--pipeline", "drift_files"),
        ]

    for name in ("drift_files", "drift_chdb"):
        st = states[name]
        assert st.status == "completed" and st.reconciles, st.error
        assert st.extracted == 60
        assert st.rejected == 3 + 10  # the three 2.5s, the ten without a name
        assert st.loaded == 60 - 13
        code, out = diffs[name]
        assert code == 0
        drift = {(d["kind"], d["path"]): d for d in out["drift"]}
        assert set(drift) == {("new", "color"), ("changed", "qty"), ("missing", "name")}
        new, changed, missing = drift["new", "color"], drift["changed", "qty"], drift["missing", "name"]
        assert new["seen"] == "str" and new["example"] == '"red"'
        # b's 20 records are two clean batches: each sampled at its first and last record
        assert new["batches"] == 2 and new["records"] == 4
        assert new["first_batch"].startswith(st.run_id)
        assert (changed["expected"], changed["seen"], changed["example"]) == ("int", "float", "2.5")
        assert changed["records"] == 3 and changed["batches"] == 1  # a batch with rejects is looked at whole
        assert (missing["expected"], missing["records"]) == ("str", 10)
        assert out["drift"] and all(d["runs"] == [st.run_id] for d in out["drift"])

    assert diffs["steady"] == (
        0,
        {"pipeline": "steady", "run_id": None, "drift": [], "discarded_rows": 0, "discarded_values": 0},
    )
    assert states["steady"].loaded == 20

    assert one_run[1]["drift"] == diffs["drift_files"][1]["drift"] and other_run[1]["drift"] == []

    code, runs = status
    assert code == 0
    assert runs[0]["drift"] == ["changed qty: float", "missing name", "new color"]
    code, timeline = audit
    assert code == 0
    assert {(d["kind"], d["path"]) for d in timeline["schema"]["drift"]} == {
        ("new", "color"),
        ("changed", "qty"),
        ("missing", "name"),
    }

    for text in texts:  # what a person reads names the drifted fields too
        assert "color" in text and "qty" in text, text

    rows = chdb.query(data / "chdb", "SELECT count() AS n FROM drift_items")
    assert rows[0]["n"] == 47
    written = [json.loads(line) for p in output.glob("drift_files/*/*.jsonl") for line in p.read_text().splitlines()]
    assert len(written) == 47 and "color" not in written[0]


CONTRACTS = (
    MODEL
    + """
def register_pipelines():
    src = lambda: [FileExtractor("INPUT/*.jsonl")]
    return [
        Pipeline(name="frozen", extractors=src(), transformers=[TypeTransformer(Item)], loader=FileLoader("OUTPUT"),
                 schema=Item, batch_size=10, schema_contract="freeze"),
        Pipeline(name="rows", extractors=src(), transformers=[TypeTransformer(Item)],
                 loader=ClickHouseLoader("rows_items", order_by=["id"]), schema=Item, batch_size=10,
                 schema_contract="discard_row"),
        Pipeline(name="values", extractors=src(), transformers=[TypeTransformer(Item)], loader=FileLoader("OUTPUT"),
                 schema=Item, batch_size=10, schema_contract="discard_value"),
    ]
"""
)


def test_each_contract_does_what_docs_schema_says(
    tmp_path: Path, nats: NatsHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, output, pipelines, data = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines", tmp_path / "data"
    write_inputs(inputs)
    pipelines.mkdir()
    (pipelines / "contracts_pipeline.py").write_text(
        CONTRACTS.replace("INPUT", str(inputs)).replace("OUTPUT", str(output))
    )

    async def settled(jc: JetlClient, name: str, run_id: str) -> RunState:
        """The run once its six batches are each loaded or rejected (a frozen run fails at its first held batch,
        before the others settle)."""
        await jc.wait(name, run_id, timeout=120)
        async for _ in jc.follow(name, run_id):
            st = await jc.run_state(name, run_id)
            if st is not None and st.loaded + st.rejected + st.filtered == 60:
                return st
        raise AssertionError("the event log ended")

    async def run_all() -> tuple[dict[str, RunState], list[Any]]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            reqs = {name: await jc.request_run(name) for name in ("frozen", "rows", "values")}
            states = {name: await settled(jc, name, r.run_id) for name, r in reqs.items()}
            return states, await jc.dead_letters("frozen")

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        states, held = asyncio.run(run_all())
        stack.check()
        monkeypatch.setenv("JETL_NATS__URL", nats.url)
        diffs = {name: cli("schema", "diff", name, "--json")[1] for name in states}
        counts = {name: cli("counts", name, "--json") for name in states}

    # freeze: the clean file's two batches load; each drifted batch is held whole, and the run fails saying why
    frozen = states["frozen"]
    assert frozen.status == "failed"
    assert frozen.error is not None and "schema contract freeze held batch" in frozen.error
    assert (frozen.extracted, frozen.loaded, frozen.rejected, frozen.filtered) == (60, 20, 40, 0)
    assert frozen.reconciles
    assert sorted((dl.scope, dl.error_type, len(dl.records)) for dl in held) == [("batch", "SchemaFrozen", 10)] * 4
    assert any("new field 'color'" in dl.reason for dl in held)
    assert {d["kind"] for d in diffs["frozen"]["drift"]} == {"new", "changed", "missing"}
    assert diffs["frozen"]["discarded_rows"] == diffs["frozen"]["discarded_values"] == 0

    # discard_row: every drifted record dropped, counted as filtered; nothing dead-lettered
    rows = states["rows"]
    assert rows.status == "completed" and rows.reconciles
    assert (rows.extracted, rows.loaded, rows.rejected, rows.filtered) == (60, 27, 0, 33)
    got = chdb.query(data / "chdb", "SELECT count() AS n, max(id) AS hi FROM rows_items")
    assert (got[0]["n"], got[0]["hi"]) == (27, 50)
    assert (diffs["rows"]["discarded_rows"], diffs["rows"]["discarded_values"]) == (33, 0)

    # discard_value: the new field and the 2.5s dropped from their records; a record left without a required value
    # (qty) is dead-lettered as missing it, as is one the source sent without a name
    values = states["values"]
    assert values.status == "completed" and values.reconciles
    assert (values.extracted, values.loaded, values.rejected, values.filtered) == (60, 47, 13, 0)
    written = [json.loads(line) for p in output.glob("values/*/*.jsonl") for line in p.read_text().splitlines()]
    assert len(written) == 47 and not any("color" in r for r in written)
    assert (diffs["values"]["discarded_rows"], diffs["values"]["discarded_values"]) == (0, 23)

    for name, (code, ledger) in counts.items():
        assert code == 0, (name, ledger)
        assert ledger["verdict"]["mismatched_runs"] == []


PER_FIELD = (
    MODEL.replace("TypeTransformer", "TypeTransformer, Contract")
    + """
def register_pipelines():
    return [
        Pipeline(name="mixed", extractors=[FileExtractor("INPUT/*.jsonl")], transformers=[TypeTransformer(Item)],
                 loader=FileLoader("OUTPUT"), schema=Item, batch_size=10,
                 schema_contract=Contract("freeze", fields={"note": "discard_value"})),
    ]
"""
)


def test_a_field_discards_its_drifted_values_while_the_rest_freezes(
    tmp_path: Path, nats: NatsHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Contract("freeze", fields={"note": "discard_value"})`: a batch whose `note` is an object in some records
    loads whole, those notes dropped (note is optional: the records load with none); a batch with a new field is held
    whole as under freeze, its reason naming that field only; the ledger reconciles."""
    inputs, output, pipelines, data = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines", tmp_path / "data"
    inputs.mkdir()
    lines = {
        "a_clean.jsonl": [{"id": i, "name": f"n{i}", "qty": i, "note": "ok"} for i in range(1, 11)],
        "b_note.jsonl": [
            {"id": i, "name": f"n{i}", "qty": i, "note": {"k": i} if i % 3 == 0 else "ok"} for i in range(11, 21)
        ],
        "c_color.jsonl": [
            {"id": i, "name": f"n{i}", "qty": i, "color": "red", "note": {"k": i}} for i in range(21, 31)
        ],
    }
    for name, recs in lines.items():
        (inputs / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    pipelines.mkdir()
    (pipelines / "mixed_pipeline.py").write_text(PER_FIELD.replace("INPUT", str(inputs)).replace("OUTPUT", str(output)))

    async def run() -> tuple[RunState, list[Any]]:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            req = await jc.request_run("mixed")
            await jc.wait("mixed", req.run_id, timeout=120)
            async for _ in jc.follow("mixed", req.run_id):
                st = await jc.run_state("mixed", req.run_id)
                if st is not None and st.loaded + st.rejected + st.filtered == 30:
                    return st, await jc.dead_letters("mixed")
            raise AssertionError("the event log ended")

    with Stack(data_dir=data, pipelines_dir=pipelines, nats_url=nats.url) as stack:
        st, held = asyncio.run(run())
        stack.check()
        monkeypatch.setenv("JETL_NATS__URL", nats.url)
        _, diff = cli("schema", "diff", "mixed", "--json")
        code, ledger = cli("counts", "mixed", "--json")

    assert (st.extracted, st.loaded, st.rejected, st.filtered) == (30, 20, 10, 0)
    assert st.reconciles and st.status == "failed"
    assert st.error is not None and "new field 'color'" in st.error and "note" not in st.error
    assert [(dl.scope, dl.error_type, len(dl.records)) for dl in held] == [("batch", "SchemaFrozen", 10)]
    written = sorted(
        (json.loads(line) for p in output.glob("mixed/*/*.jsonl") for line in p.read_text().splitlines()),
        key=lambda r: r["id"],
    )
    assert [r["id"] for r in written] == list(range(1, 21))
    assert [r["note"] for r in written if r["id"] in (12, 15, 18)] == [None, None, None]  # the objects, dropped
    assert all(r["note"] == "ok" for r in written if r["id"] not in (12, 15, 18))
    assert diff["discarded_values"] == 3 and diff["discarded_rows"] == 0
    assert {(d["kind"], d["path"]) for d in diff["drift"]} == {("changed", "note"), ("new", "color")}
    assert code == 0 and ledger["verdict"]["mismatched_runs"] == []
