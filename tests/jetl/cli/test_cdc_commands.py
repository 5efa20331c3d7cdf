"""`jetl resnapshot`, and `jetl pause` / `resume` of a change-data-capture pipeline, as an operator types them: against
the test's NATS (no services: a run request waits there) and the machine's PostgreSQL, with a table, publication and
slot of the test's own, dropped at the end. The snapshot run itself landing rows is end to end:
tests/integration/test_cdc_end_to_end.py."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jetl.ops.client import JetlClient
from jetl.settings import JetlSettings, NatsSettings
from jetl.state import add_active, get_cursor, put_cursor
from jetl.testing.cli import CliResult, jetl
from jetl.testing.servers import NatsHandle, cdc_table

pytestmark = pytest.mark.integration

PIPELINES = """
from pydantic import BaseModel
from jetl import ClickHouseLoader, Cron, FileExtractor, Pipeline, PostgresCDCExtractor

class Item(BaseModel):
    id: int
    note: str | None = None
    deleted: bool = False

def cdc(name, dsn):
    return Pipeline(name=name, extractors=[PostgresCDCExtractor(dsn, TABLE, slot=TABLE)],
                    loader=ClickHouseLoader(name), schema=Item, primary_key=["id"], deletes="deleted",
                    schedule=Cron("* * * * *"))

def register_pipelines():
    return [
        cdc("items", DSN),
        cdc("away", "postgresql://postgres@127.0.0.1:1/none"),  # a source that does not answer
        Pipeline(name="files", extractors=[FileExtractor("/none/*.jsonl")], loader=ClickHouseLoader("files"),
                 schema=Item, schedule=Cron("* * * * *")),
    ]
"""

SNAPSHOT_CURSOR = {"slot": "s", "snapshot": "0/16B3748", "confirmed": "0/16B3800", "columns": [["id", 23]]}


@pytest.fixture
def table(pg_url: str) -> Iterator[tuple[str, str]]:
    """(conninfo, name) of a fresh table with its publication (the slot is the test's to create)."""
    with cdc_table(pg_url, "cdc_cli", "id int PRIMARY KEY, note text") as (dsn, name):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE PUBLICATION {name} FOR TABLE {name}")
        yield dsn, name


@pytest.fixture
def cli(tmp_path: Path, nats: NatsHandle, table: tuple[str, str]) -> Callable[..., CliResult]:
    dsn, name = table
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    text = PIPELINES.replace("DSN", repr(dsn)).replace("TABLE", repr(name))
    (pipelines / "cdc_pipeline.py").write_text(text)
    return functools.partial(jetl, nats_url=nats.url, pipelines_dir=pipelines, data_dir=tmp_path / "data")


def on_nats(nats: NatsHandle, work: Callable[[JetlClient], Any]) -> Any:
    async def go() -> Any:
        async with JetlClient(JetlSettings(nats=NatsSettings(url=nats.url))) as jc:
            return await work(jc)

    return asyncio.run(go())


def test_resnapshot_forgets_the_cursor_logs_who_and_why_and_requests_the_snapshot_run(
    cli: Callable[..., CliResult], nats: NatsHandle, table: tuple[str, str]
) -> None:
    async def seed(jc: JetlClient) -> None:
        await put_cursor(await jc.kv(), "items", SNAPSHOT_CURSOR)

    on_nats(nats, seed)
    done = cli("resnapshot", "items", "--reason", "column added", "--by", "ana", "--json")
    assert done.code == 0, done
    out = done.json()
    assert out["pipeline"] == "items" and out["table"] == f"public.{table[1]}" and out["requested"]
    assert out["previous"] == SNAPSHOT_CURSOR and (out["by"], out["reason"]) == ("ana", "column added")

    async def check(jc: JetlClient) -> None:
        assert await get_cursor(await jc.kv(), "items") is None  # the next run takes a snapshot
        changed = await jc.events(out["cursor_event"], "items")
        assert [(e.type, e.reason, e.by) for e in changed] == [("cursor.changed", "column added", "ana")]  # type: ignore[attr-defined]
        requested = await jc.events(out["run_id"], "items")
        assert [e.type for e in requested] == ["run.requested"]  # waits in NATS for an extractor

    on_nats(nats, check)

    text = cli("resnapshot", "items", "--no-run")
    assert text.code == 0, text
    assert f"its next run takes a new snapshot of public.{table[1]}" in text.stdout


def test_resnapshot_prints_the_run_it_requested(cli: Callable[..., CliResult], table: tuple[str, str]) -> None:
    done = cli("resnapshot", "items")
    assert done.code == 0, done
    assert "requested items run items-" in done.stdout
    assert f"takes a new snapshot of public.{table[1]}" in done.stdout


def test_resnapshot_refuses_a_pipeline_that_reads_no_table_by_cdc(cli: Callable[..., CliResult]) -> None:
    done = cli("resnapshot", "files")
    assert done.code == 2 and "'files' reads no table by change data capture" in done.stderr, done
    assert "jetl cursor reset files" in done.stderr
    assert cli("resnapshot", "nope").code == 2


def test_resnapshot_refuses_while_a_run_is_unfinished_naming_it_and_changes_nothing(
    cli: Callable[..., CliResult], nats: NatsHandle
) -> None:
    async def busy(jc: JetlClient) -> None:
        await put_cursor(await jc.kv(), "items", SNAPSHOT_CURSOR)
        await add_active(await jc.kv(), "items", "items-manual-busy", datetime.now(UTC))

    on_nats(nats, busy)
    done = cli("resnapshot", "items", "--reason", "column added")
    assert done.code == 2, done
    assert "unfinished run items-manual-busy" in done.stderr and "jetl runs cancel items-manual-busy" in done.stderr

    async def cursor(jc: JetlClient) -> Any:
        return await get_cursor(await jc.kv(), "items")

    assert on_nats(nats, cursor) == SNAPSHOT_CURSOR


def test_pause_of_a_cdc_pipeline_warns_of_the_wal_its_slot_keeps_and_resume_says_the_next_run_reads_it(
    cli: Callable[..., CliResult], table: tuple[str, str]
) -> None:
    dsn, name = table
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
        conn.execute(f"INSERT INTO {name} SELECT i, 'x' FROM generate_series(1, 100) i")
    paused = cli("pause", "items")
    assert paused.code == 0, paused
    assert "paused items" in paused.stdout
    assert "the source keeps the WAL for its replication slot" in paused.stderr
    assert f"public.{name}: " in paused.stderr and f"kept now, slot {name} at " in paused.stderr

    as_json = cli("pause", "items", "--json")
    assert as_json.code == 0, as_json
    (log,) = as_json.json()["source_log"]
    assert log["table"] == f"public.{name}" and log["retained_bytes"] > 0

    resumed = cli("resume", "items")
    assert resumed.code == 0, resumed
    assert "the next run of items reads everything its replication slot kept while it was paused" in resumed.stdout

    plain = cli("pause", "files")  # no source log: no warning
    assert plain.code == 0 and "WAL" not in plain.stderr, plain


def test_a_source_that_does_not_answer_does_not_fail_the_pause(cli: Callable[..., CliResult]) -> None:
    paused = cli("pause", "away")
    assert paused.code == 0, paused
    assert "keeps the WAL" in paused.stderr and "TransientError" in paused.stderr
    (log,) = cli("pause", "away", "--json").json()["source_log"]
    assert log["retained_bytes"] is None and log["detail"]
    assert cli("resume", "away").code == 0
