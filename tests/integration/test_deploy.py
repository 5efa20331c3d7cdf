"""`jetl deploy` against a real nats-server: idempotent, a live config that drifted is updated or reported, and no
other command or service creates what it declares (a server without it is the wrong server)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType
from typer.testing import CliRunner

from jetl import subjects
from jetl.bus import connect
from jetl.cli import app
from jetl.settings import NatsSettings
from jetl.subjects import Kind, stage_durable
from jetl.testing.cli import jetl
from jetl.testing.servers import NatsHandle
from jetl.topology import consumer_config, stream_config

pytestmark = pytest.mark.integration


PIPELINE = """
from pydantic import BaseModel
from jetl import ConsoleLoader, FileExtractor, Pipeline

class Row(BaseModel):
    id: int

def register_pipelines():
    return [Pipeline(name="items", extractors=[FileExtractor("/nonexistent/*.jsonl")], loader=ConsoleLoader(),
                     schema=Row)]
"""


@pytest.fixture
def items(bare_nats: NatsHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> NatsHandle:
    """The operator's environment for `jetl deploy`: a bare server, and a pipelines folder with pipeline `items`
    (whose transformer and loader durables deploy declares)."""
    monkeypatch.setenv("JETL_NATS__URL", bare_nats.url)
    monkeypatch.setenv("JETL_PIPELINES_DIR", str(tmp_path))
    (tmp_path / "items_pipeline.py").write_text(PIPELINE)
    return bare_nats


def deploy(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, ["deploy", "--no-migrate", *args])
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.exit_code, result.stdout


def actions(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["name"]: (c["action"], c["detail"]) for c in report["changes"]}


async def tamper(url: str) -> None:
    """Drift by hand: a stream's max age, another's byte limit and discard policy, a consumer's max_ack_pending, the
    KV bucket's history and byte limit."""
    nc = await connect(NatsSettings(url=url))
    js = nc.jetstream()
    try:
        dlq = stream_config(Kind.DLQ)
        dlq.max_age = 86400.0
        await js.update_stream(dlq)
        logs = stream_config(Kind.LOGS)
        logs.max_bytes, logs.discard = 1024 * 1024, DiscardPolicy.NEW
        await js.update_stream(logs)
        info = await js.consumer_info("JETL_CLEAN", stage_durable("loader", "items"))
        cfg = info.config
        cfg.max_ack_pending = 7
        await js.add_consumer("JETL_CLEAN", cfg)
        kv = (await js.stream_info("KV_JETL_STATE")).config
        kv.max_msgs_per_subject, kv.max_bytes = 5, 1024 * 1024
        await js.update_stream(kv)
    finally:
        await nc.close()


async def recreate_clean(url: str, **changes: Any) -> None:
    """Replace JETL_CLEAN by one declared with `changes` (what cannot, or could not, be changed in place)."""
    nc = await connect(NatsSettings(url=url))
    js = nc.jetstream()
    try:
        await js.delete_stream("JETL_CLEAN")
        cfg = stream_config(Kind.CLEAN)
        for name, value in changes.items():
            setattr(cfg, name, value)
        await js.add_stream(cfg)
    finally:
        await nc.close()


def test_deploy_is_idempotent_and_never_ignores_drift(items: NatsHandle, tmp_path: Path) -> None:

    code, report = deploy("--dry-run", "--json")
    assert code == 0 and actions(report)["JETL_RUNS"][0] == "would create"
    code, report = deploy("--json")
    # 7 streams, 13 consumers (3 shared, 8 tracker shards, the transformer's and the loader's of pipeline "items"),
    # KV, objects
    assert code == 0 and report["changed"] == 22 and report["differs"] == 0

    code, out = deploy()
    assert code == 0 and "nothing to change" in out

    asyncio.run(tamper(items.url))
    code, report = deploy("--dry-run", "--json")
    a = actions(report)
    assert code == 0 and report["changed"] == 4
    assert a["JETL_DLQ"][0] == "would update" and "max_age: 86400.0 -> 2592000" in a["JETL_DLQ"][1]
    loader = f"JETL_CLEAN/{stage_durable('loader', 'items')}"
    assert a[loader][0] == "would update" and "max_ack_pending: 7 ->" in a[loader][1]
    assert a["JETL_STATE"][0] == "would update" and "max_msgs_per_subject: 5 -> 1" in a["JETL_STATE"][1]
    assert f"max_bytes: 1048576 -> {1024**3}" in a["JETL_STATE"][1]
    assert a["JETL_LOGS"][0] == "would update" and f"max_bytes: 1048576 -> {512 * 1024**2}" in a["JETL_LOGS"][1]
    assert "discard: new -> old" in a["JETL_LOGS"][1]
    code, report = deploy("--json")
    assert code == 0 and {k for k, (act, _) in actions(report).items() if act == "updated"} == {
        "JETL_DLQ",
        "JETL_LOGS",
        loader,
        "JETL_STATE",
    }
    code, report = deploy("--json")
    assert code == 0 and report["changed"] == 0

    # a memory-backed stream (storage cannot be changed in place), within the server's memory store
    asyncio.run(recreate_clean(items.url, storage=StorageType.MEMORY, max_bytes=1024 * 1024))
    code, report = deploy("--json")
    act, detail = actions(report)["JETL_CLEAN"]
    assert code == 1 and act == "differs" and "storage" in detail and "cannot be changed in place" in detail


async def stream_names(url: str) -> list[str]:
    nc = await connect(NatsSettings(url=url))
    try:
        return list(await nc.jetstream().streams_info())
    finally:
        await nc.close()


def no_deployment(url: str) -> str:
    return (
        f"this NATS at {url} has no jetl deployment; run `jetl deploy` or point JETL_NATS__URL/--context at the "
        "right one"
    )


@pytest.mark.parametrize("command", [["run", "items"], ["status"]])
def test_commands_other_than_deploy_never_create_streams(
    bare_nats: NatsHandle, tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "items_pipeline.py").write_text(PIPELINE)
    result = jetl(*command, nats_url=bare_nats.url, pipelines_dir=tmp_path)
    assert result.code == 3, result.stderr
    assert no_deployment(bare_nats.url) in " ".join(result.stderr.split())
    assert asyncio.run(stream_names(bare_nats.url)) == []  # the wrong server is left as it was found


def test_a_service_waits_for_the_deployment_then_gives_up_clearly(bare_nats: NatsHandle, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "JETL_NATS__URL": bare_nats.url,
        "JETL_NATS__DEPLOYMENT_WAIT": "1",
        "JETL_PIPELINES_DIR": str(tmp_path),
        "JETL_DATA_DIR": str(tmp_path / "data"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "jetl", "serve", "transformer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 3, text[-3000:]
    assert f"waiting for jetl deployment at {bare_nats.url}" in text
    assert no_deployment(bare_nats.url) in " ".join(out.stderr.split())
    assert "Traceback" not in text
    assert asyncio.run(stream_names(bare_nats.url)) == []


async def clean_stream_after_loader_ack(url: str) -> tuple[int, int]:
    """Publish a clean batch, let the loader's durable consumer take and ack it: messages held before and after."""
    nc = await connect(NatsSettings(url=url))
    js = nc.jetstream()
    try:
        await js.publish(subjects.clean("items", "r1"), b"{}\n[]")
        before = (await js.stream_info("JETL_CLEAN")).state.messages
        sub = await js.pull_subscribe_bind(stage_durable("loader", "items"), "JETL_CLEAN")
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.ack_sync()
        for _ in range(50):  # the server removes an acked message of an interest stream right after the ack
            after = (await js.stream_info("JETL_CLEAN")).state.messages
            if after == 0:
                break
            await asyncio.sleep(0.1)
        return before, after
    finally:
        await nc.close()


def test_a_clean_batch_goes_once_the_loader_acked_it_and_an_old_clean_stream_is_moved_in_place(
    items: NatsHandle, tmp_path: Path
) -> None:
    assert deploy("--json")[0] == 0
    assert asyncio.run(clean_stream_after_loader_ack(items.url)) == (1, 0)

    asyncio.run(recreate_clean(items.url, retention=RetentionPolicy.LIMITS))  # as deployments before interest
    code, report = deploy("--json")
    act, detail = actions(report)["JETL_CLEAN"]
    assert code == 0 and act == "updated" and "retention: limits -> interest" in detail, (act, detail)
    assert deploy("--json")[1]["changed"] == 0


async def old_raw_deployment(url: str) -> None:
    """A deployment from before the archive: JETL_RAW under limits, no archiver durable, and one raw batch the
    transformer already acked (under limits it stays: it is the history a replay reads)."""
    nc = await connect(NatsSettings(url=url))
    js = nc.jetstream()
    try:
        await js.delete_consumer("JETL_RAW", "archiver")
        await js.delete_stream("JETL_RAW")
        cfg = stream_config(Kind.RAW)
        cfg.retention = RetentionPolicy.LIMITS
        await js.add_stream(cfg)
        await js.add_consumer("JETL_RAW", consumer_config("transformer"))
        await js.publish(subjects.raw("items", "r1"), b"{}\n[]")
        sub = await js.pull_subscribe_bind("transformer", "JETL_RAW")
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.ack_sync()
    finally:
        await nc.close()


async def raw_held(url: str) -> tuple[int, int, int]:
    """Messages JETL_RAW holds, those the archiver has still to take, and those pipeline items' transformer has."""
    nc = await connect(NatsSettings(url=url))
    js = nc.jetstream()
    try:
        info = await js.stream_info("JETL_RAW")
        archiver = await js.consumer_info("JETL_RAW", "archiver")
        transformer = await js.consumer_info("JETL_RAW", stage_durable("transformer", "items"))
        return info.state.messages, archiver.num_pending or 0, transformer.num_pending or 0
    finally:
        await nc.close()


def test_an_old_raw_stream_moves_to_interest_without_losing_a_batch_the_archiver_has_not_seen(
    items: NatsHandle, tmp_path: Path
) -> None:
    assert deploy("--json")[0] == 0
    asyncio.run(old_raw_deployment(items.url))
    code, report = deploy("--json")
    act, detail = actions(report)["JETL_RAW"]
    assert code == 0 and act == "updated" and "retention: limits -> interest" in detail, (act, detail)
    assert actions(report)["JETL_RAW/archiver"][0] == "created"
    assert asyncio.run(raw_held(items.url)) == (1, 1, 0)  # kept for the archiver, created before the move
    # the shared transformer durable is gone, and the batch it transformed is not handed to the pipeline's again
    assert actions(report)["JETL_RAW/transformer"][0] == "deleted"


async def declare_shared_loader(url: str) -> None:
    """The loader's durable as an older deployment declared it: one for every pipeline."""
    nc = await connect(NatsSettings(url=url))
    try:
        cfg = consumer_config("loader")
        cfg.durable_name, cfg.filter_subject = "loader", subjects.pattern(Kind.CLEAN)
        await nc.jetstream().add_consumer("JETL_CLEAN", cfg)
    finally:
        await nc.close()


def test_a_pipeline_added_later_gets_its_consumers_and_a_shared_one_left_behind_goes(
    items: NatsHandle, tmp_path: Path
) -> None:
    assert deploy()[0] == 0
    asyncio.run(declare_shared_loader(items.url))
    (tmp_path / "orders_pipeline.py").write_text(PIPELINE.replace('"items"', '"orders"'))

    code, report = deploy("--json")
    a = actions(report)
    assert code == 0
    assert a[f"JETL_RAW/{stage_durable('transformer', 'orders')}"][0] == "created"
    assert a[f"JETL_CLEAN/{stage_durable('loader', 'orders')}"][0] == "created"
    assert a[f"JETL_CLEAN/{stage_durable('loader', 'items')}"][0] == "unchanged"
    assert a["JETL_CLEAN/loader"][0] == "deleted"  # interest retention: it would keep every clean batch for ever
    code, report = deploy("--json")
    assert code == 0 and report["changed"] == 0
