"""`jetl status` reads the run states on one plain connection (`jetl.ops.run_list`): it shows what the operator
client reads, and imports none of what only publishing or folding needs (`bench/cli_latency.py` times it)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jetl.bus import connect
from jetl.cli import app
from jetl.events import (
    BatchExtracted,
    BatchLoaded,
    BatchRejected,
    BatchTransformed,
    Event,
    RunCompleted,
    RunExtracted,
    RunFailed,
    RunRequested,
    RunStarted,
)
from jetl.settings import NatsSettings
from jetl.state import apply, bucket
from jetl.testing.servers import NatsHandle


def _runs() -> list[Event]:
    """Runs of every kind the table has a column or a note for: completed with a cursor, failed with an error and a
    dead-lettered batch, a shadow replay, a redrive, one of another pipeline not started (one running would show
    its time so far, which moves between two reads)."""
    P = "orders"
    done, failed, shadow, redrive = (f"{P}-{x}" for x in ("done", "bad", "rp1", "rd1"))
    return [
        RunRequested(pipeline=P, run_id=done),
        RunStarted(pipeline=P, run_id=done, cursor={"value": "2026-11-01T00:00:00+00:00", "key": 3}),
        BatchExtracted(pipeline=P, run_id=done, batch_id=f"{done}/000000", seq=0, records=5),
        BatchTransformed(
            pipeline=P, run_id=done, batch_id=f"{done}/000000", seq=0, records_in=5, records_out=4, filtered=1
        ),
        BatchLoaded(pipeline=P, run_id=done, batch_id=f"{done}/000000", seq=0, records=4),
        RunExtracted(pipeline=P, run_id=done, batches=1, records=5, cursor={"value": "2026-11-02T00:00:00+00:00"}),
        RunCompleted(pipeline=P, run_id=done, extracted=5, loaded=4, rejected=0, filtered=1),
        RunRequested(pipeline=P, run_id=failed),
        RunStarted(pipeline=P, run_id=failed),
        BatchExtracted(pipeline=P, run_id=failed, batch_id=f"{failed}/000000", seq=0, records=3),
        BatchRejected(
            pipeline=P,
            run_id=failed,
            batch_id=f"{failed}/000000",
            seq=0,
            records=3,
            stage="transform",
            scope="batch",
            reason="boom",
        ),
        RunFailed(pipeline=P, run_id=failed, error="the transformer said boom " * 4),
        RunRequested(pipeline=P, run_id=shadow, trigger="replay", parent_run_id=done, shadow=True),
        RunRequested(pipeline=P, run_id=redrive, trigger="redrive", redrive=[4, 7]),
        RunRequested(pipeline="other", run_id="other-live"),
    ]


async def _seed(url: str) -> None:
    nc = await connect(NatsSettings(url=url))
    try:
        kv = await bucket(nc)
        for ev in _runs():
            await apply(kv, ev)
    finally:
        await nc.close()


@pytest.mark.integration
def test_status_shows_what_the_operator_client_reads(nats: NatsHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    import jetl.ops.run_list
    from jetl.ops.client import JetlClient

    asyncio.run(_seed(nats.url))
    monkeypatch.setenv("JETL_NATS__URL", nats.url)
    quick = [CliRunner().invoke(app, ["status", *args]) for args in ([], ["--json"], ["orders", "--limit", "2"])]

    async def through_the_client(s: NatsSettings, pipeline: str | None = None) -> Any:
        async with JetlClient() as jc:  # the full path: settings, client, batch ledgers of replays
            return await jc.runs(pipeline)

    monkeypatch.setattr(jetl.ops.run_list, "run_list", through_the_client)
    full = [CliRunner().invoke(app, ["status", *args]) for args in ([], ["--json"], ["orders", "--limit", "2"])]
    for q, f in zip(quick, full, strict=True):
        assert q.exit_code == 0 and f.exit_code == 0, q.output + f.output
        assert q.stdout == f.stdout
    rows = json.loads(quick[1].stdout)
    assert {r["run_id"] for r in rows} == {"orders-done", "orders-bad", "orders-rp1", "orders-rd1", "other-live"}
    assert "shadow" in quick[0].stdout and "2 dead letter(s)" in quick[0].stdout and "cursor " in quick[0].stdout


@pytest.mark.integration
def test_status_imports_neither_pydantic_nor_what_only_publishing_or_folding_needs(
    nats: NatsHandle, tmp_path: Path
) -> None:
    asyncio.run(_seed(nats.url))
    code = (
        "import sys\n"
        "sys.argv = ['jetl', 'status']\n"
        "from jetl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'pydantic', 'pydantic_settings', 'faststream', 'structlog', 'croniter', 'jetl.events', 'jetl.bus',\n"
        "    'jetl.ops.client', 'jetl.runstate', 'rich'}\n"
        "print(sorted(set(sys.modules) & heavy), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETL_")} | {"JETL_NATS__URL": nats.url}
    # from a folder with no stack context (`jetl.context`): reading one takes its pydantic model
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=tmp_path
    )
    assert "orders/orders-done" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
