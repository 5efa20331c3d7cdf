"""The operational toolkit against a running deployment: four services as OS processes over a real nats-server.

One stack, one story: health before deploy, deploy, services up and healthy, a good run and a failing one (the
webhook gets the alert after a retry), stale and failing pipelines make health fail until paused, `jetl logs` pulls
one run's lines across services in time order, the loader serves Prometheus metrics, a service that stops is
missed, and a pipeline added while everything runs is picked up by every service without a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jetl.bus import connect
from jetl.cli import app
from jetl.ops.client import JetlClient
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import ServiceProcess, Stack, free_port, service_env
from jetl.state import RunMark, bucket, last_ok_key
from jetl.subjects import stage_durable
from jetl.testing.servers import NatsHandle
from jetl.testing.wait import wait_for
from jetl.testing.webhook import Hook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINES = """
from collections.abc import AsyncIterator
from pydantic import BaseModel
from jetl import ConfigError, Cron, FileExtractor, FileLoader, Pipeline, TypeTransformer
from jetl.protocols import Check, Chunk, ExtractContext

class Row(BaseModel):
    id: int
    name: str

class Broken:
    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        raise ConfigError("source credentials rejected")
        yield Chunk(records=[])

    def next_cursor(self):
        return None

    def check(self, settings):
        return Check("ok", "configured")

def register_pipelines():
    return [
        Pipeline(name="good", extractors=[FileExtractor("INPUT")], transformers=[TypeTransformer(Row)],
                 loader=FileLoader("OUTPUT"), schema=Row, schedule=Cron("0 0 1 1 *")),
        Pipeline(name="broken", extractors=[Broken()], loader=FileLoader("OUTPUT"), schema=Row,
                 schedule=Cron("0 0 1 1 *")),
        Pipeline(name="hourly", extractors=[FileExtractor("INPUT")], loader=FileLoader("OUTPUT"), schema=Row,
                 schedule=Cron("0 * * * *")),
    ]
"""

LATE_PIPELINE = """
from pydantic import BaseModel
from jetl import FileExtractor, FileLoader, Pipeline

class Row(BaseModel):
    id: int
    name: str

def register_pipelines():
    return [Pipeline(name="late", extractors=[FileExtractor("INPUT")], loader=FileLoader("OUTPUT"), schema=Row)]
"""


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook(fail_first=1)
    yield h
    h.server.shutdown()


def cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, list(args))
    out = result.stdout
    try:
        return result.exit_code, json.loads(out)
    except json.JSONDecodeError:
        return result.exit_code, out + result.stderr


def rows(health: dict[str, Any], check: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in health["checks"] if r["check"] == check}


def test_operations_toolkit_against_a_running_deployment(
    tmp_path: Path, bare_nats: NatsHandle, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, output, pipelines, data = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines", tmp_path / "data"
    inputs.mkdir()
    (inputs / "rows.jsonl").write_text('{"id": 1, "name": "a"}\n{"id": "two", "name": "b"}\n{"id": 3, "name": "c"}\n')
    pipelines.mkdir()
    (pipelines / "ops_pipeline.py").write_text(PIPELINES.replace("INPUT", str(inputs)).replace("OUTPUT", str(output)))
    for k, v in {
        "JETL_NATS__URL": bare_nats.url,
        "JETL_PIPELINES_DIR": str(pipelines),
        "JETL_DATA_DIR": str(data),
    }.items():
        monkeypatch.setenv(k, v)
    settings = JetlSettings()

    # before deploy: unhealthy, and it says why
    code, report = cli("health", "--json", "--timeout", "0.5")
    assert code == 1 and not report["healthy"]
    assert rows(report, "stream")["JETL_RUNS"]["status"] == "fail"
    assert "jetl deploy" in rows(report, "stream")["JETL_RUNS"]["detail"]

    code, report = cli("deploy", "--no-migrate", "--json")
    # 7 streams, 1 KV bucket, 1 object store, 3 shared consumers, 8 tracker shards and the transformer's and loader's
    # of 3 pipelines
    assert code == 0 and report["changed"] == 9 + 3 + 8 + 2 * 3

    metrics_port = free_port()
    extra = {"JETL_ALERT_WEBHOOK_URL": hook.url, "JETL_TICK_SECONDS": "0.2", "JETL_STALE_CHECK_SECONDS": "0.5"}
    loader = ServiceProcess(
        "loader",
        service_env(bare_nats.url, data, pipelines, {"JETL_METRICS_PORT": str(metrics_port)}),
        data / "logs" / "loader.log",
    )
    with Stack(
        data, pipelines, nats_url=bare_nats.url, services=("extractor", "transformer", "scheduler"), extra_env=extra
    ) as stack:
        loader.start()
        try:
            report = wait_for("every service to be seen", lambda: _healthy_services())
            assert set(rows(report, "service")) == {"extractor", "transformer", "loader", "scheduler"}
            assert rows(report, "destination")["loader"]["status"] == "ok"
            assert rows(report, "pipeline")["good"]["status"] == "warn"  # scheduled, no run yet

            good, broken = asyncio.run(_runs(settings))
            assert good.status == "completed" and good.loaded == 2 and good.rejected == 1
            assert broken.status == "failed"
            stack.check()

            # the failure alert arrives once, after one retried 503
            alert = wait_for("the run.failed alert", lambda: hook.bodies)[0]
            assert alert["kind"] == "run.failed" and alert["run_id"] == broken.run_id
            assert "source credentials rejected" in alert["text"] and hook.calls == 2

            # a pipeline whose last success is three hours old on an hourly schedule is stale
            asyncio.run(_put_ok(settings, "hourly", datetime.now(UTC) - timedelta(hours=3)))
            code, report = cli("health", "--json")
            assert code == 1
            pipes = rows(report, "pipeline")
            assert pipes["good"]["status"] == "ok" and good.run_id in pipes["good"]["detail"]
            assert pipes["broken"]["status"] == "fail" and "never succeeded" in pipes["broken"]["detail"]
            assert pipes["hourly"]["status"] == "fail" and pipes["hourly"]["detail"].startswith("stale")
            stale_alert = wait_for("the stale alert", lambda: [b for b in hook.bodies if b["kind"] == "stale"])[0]
            assert stale_alert["pipeline"] == "hourly"

            # pausing takes them out of the verdict; schedule shows who paused what
            assert cli("pause", "broken")[0] == 0 and cli("pause", "hourly")[0] == 0
            code, report = cli("health", "--json")
            assert code == 0 and report["healthy"], report
            assert rows(report, "pipeline")["hourly"]["detail"] == "paused"
            code, sched = cli("schedule", "--json")
            by_name = {s["pipeline"]: s for s in sched["schedules"]}
            assert by_name["hourly"]["paused"] and by_name["hourly"]["paused_by"] == "jetl pause"
            assert len(by_name["good"]["next_runs"]) == 3 and not by_name["good"]["paused"]
            assert cli("resume", "hourly", "--from-now")[0] == 0
            assert not {s["pipeline"]: s for s in cli("schedule", "--json")[1]["schedules"]}["hourly"]["paused"]
            assert cli("pause", "nope")[0] == 2

            # one run's log lines, from every service that logged for it, in time order
            code, out = cli("logs", good.run_id, "--json")
            lines = [json.loads(x) for x in out.splitlines()] if isinstance(out, str) else [out]
            assert code == 0, out
            assert {"extractor", "transformer", "scheduler"} <= {x["service"] for x in lines}
            assert [x["timestamp"] for x in lines] == sorted(x["timestamp"] for x in lines)
            assert all(x["run_id"] == good.run_id for x in lines)
            assert any(x["event"] == "record rejected" for x in lines)
            code, _ = cli("logs", "no_such_run")
            assert code == 1
            started = time.monotonic()
            code, out = cli("logs", good.run_id, "--json", "--follow", "--for", "1")
            assert code == 0 and time.monotonic() - started >= 1.0
            followed = [json.loads(x) for x in out.splitlines()] if isinstance(out, str) else [out]
            # every line `logs` gave, and only the run's: a service may still log for the run in between (the
            # scheduler's fold of a late event), so following may show more, never fewer
            assert all(x["run_id"] == good.run_id for x in followed)
            assert len({json.dumps(x, sort_keys=True) for x in followed}) == len(followed)  # none shown twice
            assert {json.dumps(x, sort_keys=True) for x in lines} <= {json.dumps(x, sort_keys=True) for x in followed}

            # Prometheus metrics from the loader
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert 'jetl_records_loaded_total{service="loader"} 2.0' in text
            assert 'jetl_messages_settled_total{outcome="ack",service="loader"}' in text
            assert f'jetl_consumer_pending{{consumer="{stage_durable("loader", "good")}"}}' in text
            assert "faststream_received_messages_total" in text
            # labelled by kind and pipeline, never by run: a run id in a label is a new series per run
            assert good.run_id not in text and '"jetl.clean.good"' in text and '"jetl.events.good"' in text

            # a pipeline module dropped into the folder runs without restarting anything, once deployed (its
            # consumers: only the operator may create them)
            (pipelines / "late_pipeline.py").write_text(
                LATE_PIPELINE.replace("INPUT", str(inputs)).replace("OUTPUT", str(output))
            )
            assert cli("deploy", "--no-migrate", "--json")[0] == 0
            late = asyncio.run(_run(settings, "late"))
            assert late.status == "completed" and late.loaded == 2

            # a service that stops is missed
            stack.procs["transformer"].stop()
            code, report = cli("health", "--json")
            assert code == 1 and rows(report, "service")["transformer"]["status"] == "fail"
        finally:
            loader.stop()


def _healthy_services() -> dict[str, Any] | None:
    _code, report = cli("health", "--json", "--timeout", "1")
    if not isinstance(report, dict):
        return None
    services = rows(report, "service")
    ok = all(r["status"] == "ok" for r in services.values()) and rows(report, "destination")["loader"]["status"] == "ok"
    return report if ok else None


async def _runs(settings: JetlSettings) -> tuple[Any, Any]:
    return await _run(settings, "good"), await _run(settings, "broken")


async def _run(settings: JetlSettings, pipeline: str) -> Any:
    async with JetlClient(settings) as jc:
        req = await jc.request_run(pipeline)
        return await jc.wait(pipeline, req.run_id, timeout=60)


async def _put_ok(settings: JetlSettings, pipeline: str, at: datetime) -> None:
    nc = await connect(NatsSettings(url=settings.nats.url))
    try:
        kv = await bucket(nc)
        mark = RunMark(run_id=f"{pipeline}-old", at=at)
        await kv.put(last_ok_key(pipeline), mark.model_dump_json().encode())
    finally:
        await nc.close()
