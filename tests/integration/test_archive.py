"""History full stops nothing: with JETL_RAW limited to a few dozen batches, runs totalling more than four times its
byte limit all complete and load exactly, and the first of them, long gone from the stream, replays exactly from the
archive (its `--diff` shows no change). Four services as OS processes over a real nats-server, driven through the
CLI, with the file loader's rows as the proof.

On the way, the stream is made to fill for real (the transformer, which also runs the archiver, is down while a run
extracts): ingestion pauses with the reason in `jetl health` (the stream named, with the setting to raise), and
resumes by itself once the transformer is back, losing nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetl import subjects
from jetl.archive import Archive
from jetl.bus import connect
from jetl.ops.client import JetlClient
from jetl.projection import RunState
from jetl.settings import JetlSettings, NatsSettings
from jetl.stack.embedded import Stack
from jetl.subjects import Kind
from jetl.testing.cli import CliResult, jetl
from jetl.testing.pipelines import file_pipeline
from jetl.testing.servers import NatsHandle
from jetl.testing.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT = 64 * 1024
"""JETL_RAW's byte limit in this test: about 18 raw batches of 100 records."""
RUNS, RECORDS = 4, 2500
"""Each run's raw batches alone are more than the limit; together more than four times it."""


class Env:
    def __init__(self, tmp: Path, nats: NatsHandle) -> None:
        self.url = nats.url
        self.pipelines, self.data, self.inputs, self.out = (tmp / n for n in ("pipelines", "data", "in", "out"))
        for d in (self.pipelines, self.inputs):
            d.mkdir()
        text = file_pipeline("sales", batch_size=100).replace("INPUT", str(self.inputs))
        (self.pipelines / "sales_pipeline.py").write_text(text.replace("OUTPUT", str(self.out)))
        self.stack = Stack(
            data_dir=self.data,
            pipelines_dir=self.pipelines,
            nats_url=self.url,
            extra_env={"JETL_NATS__STREAM_MAX_BYTES__RAW": str(LIMIT)},
        )

    def settings(self) -> JetlSettings:
        return JetlSettings(nats=NatsSettings(url=self.url), data_dir=self.data)

    def cli(self, *args: str, ok: bool = True) -> CliResult:
        result = jetl(*args, nats_url=self.url, pipelines_dir=self.pipelines, data_dir=self.data)
        if ok:
            assert result.code == 0, f"jetl {' '.join(args)} exited {result.code}: {result.stdout}{result.stderr}"
        return result

    def input(self, k: int) -> set[int]:
        """Run k's input: a file of its own ids (the previous run's file removed)."""
        for old in self.inputs.iterdir():
            old.unlink()
        ids = range(k * RECORDS, (k + 1) * RECORDS)
        (self.inputs / f"part{k}.jsonl").write_text("".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in ids))
        return set(ids)

    def request(self) -> str:
        async def go() -> str:
            async with JetlClient(self.settings()) as jc:
                return (await jc.request_run("sales")).run_id

        return asyncio.run(go())

    def wait(self, run_id: str) -> RunState:
        async def go() -> RunState:
            async with JetlClient(self.settings()) as jc:
                return await jc.wait("sales", run_id, timeout=300)

        return asyncio.run(go())

    def raw_stream(self, run_id: str | None = None) -> tuple[int, int]:
        """(messages, bytes) JETL_RAW holds, of one run or in all."""

        async def go() -> tuple[int, int]:
            nc = await connect(NatsSettings(url=self.url))
            try:
                js = nc.jetstream()
                if run_id is None:
                    info = await js.stream_info(subjects.stream_name(Kind.RAW))
                    return info.state.messages, info.state.bytes
                subject = subjects.raw("sales", run_id)
                info = await js.stream_info(subjects.stream_name(Kind.RAW), subjects_filter=subject)
                return (info.state.subjects or {}).get(subject, 0), -1
            finally:
                await nc.close()

        return asyncio.run(go())

    def rows(self) -> dict[str, list[int]]:
        """The file loader's rows: ids by the run whose parts hold them (the diff's shadow left out)."""
        out: dict[str, list[int]] = {}
        for part in (self.out / "sales").rglob("*.jsonl"):
            if ".shadow" in part.parts:
                continue
            for line in part.read_text().splitlines():
                row = json.loads(line)
                out.setdefault(part.relative_to(self.out / "sales").parts[0], []).append(row["id"])
        return out


@pytest.fixture
def env(tmp_path: Path, bare_nats: NatsHandle) -> Iterator[Env]:
    e = Env(tmp_path, bare_nats)
    yield e
    e.stack.stop()


def test_runs_four_times_the_raw_streams_limit_complete_and_the_first_replays_exactly_from_the_archive(
    env: Env,
) -> None:
    env.stack.start()  # deploys JETL_RAW with the small limit, as `jetl deploy` would with the same setting
    inputs = {}

    # Run 0 with the transformer (and so the archiver) down: its batches fill JETL_RAW and extraction pauses.
    env.stack.procs["transformer"].stop()
    inputs[0] = env.input(0)
    first = env.request()
    wait_for("JETL_RAW to fill", lambda: env.raw_stream()[1] > LIMIT * 0.9)

    def paused() -> dict[str, Any] | None:
        checks = env.cli("health", "--json", ok=False).json()["checks"]
        by = {(c["check"], c["name"]): c for c in checks}
        return by if by[("service", "extractor")]["status"] == "warn" else None

    seen = wait_for("health to show the extractor paused", paused)
    raw, extractor = seen[("stream", "JETL_RAW")], seen[("service", "extractor")]
    assert raw["status"] == "fail" and "JETL_NATS__STREAM_MAX_BYTES" in raw["detail"], raw
    assert "paused" in extractor["detail"] and "stream JETL_RAW is full" in extractor["detail"], extractor
    assert "JETL_NATS__STREAM_MAX_BYTES" in extractor["detail"]
    for kind in ("kv", "object store", "archive", "jetstream"):  # every store shows used / limit
        assert any(c == kind for c, _ in seen), kind

    env.stack.procs["transformer"].start()  # room returns as batches are transformed and archived: it resumes
    runs = [first]
    state = env.wait(first)
    assert state.status == "completed", state.error
    assert state.extracted == state.loaded == RECORDS and state.reconciles  # the paused run lost nothing
    for k in range(1, RUNS):
        inputs[k] = env.input(k)
        runs.append(env.request())
        state = env.wait(runs[-1])
        assert state.status == "completed", state.error
        assert state.extracted == state.loaded == RECORDS and state.reconciles

    env.stack.check()
    archive = Archive.of(env.settings())

    # the archiver acks beside the transformer, not before the load: wait for it to have written every batch
    def all_archived() -> dict[str, list[str]] | None:
        found = {r: archive.batches("sales", r) for r in runs}
        return found if all(len(b) == RECORDS // 100 for b in found.values()) else None

    archived = wait_for("every batch of every run archived", all_archived)
    assert all(len(b) == RECORDS // 100 for b in archived.values())  # every batch of every run, once
    total = sum(len(archive.get("sales", r, b)) for r, bs in archived.items() for b in bs)
    assert total > 4 * LIMIT  # what went through JETL_RAW: more than four times its limit
    assert env.raw_stream() == (0, 0)  # the stream keeps nothing done: every batch transformed and archived
    loaded = env.rows()
    assert {r: sorted(ids) for r, ids in loaded.items()} == {r: sorted(inputs[k]) for k, r in enumerate(runs)}

    # The first run is long gone from the stream: its replay reads the archive, and its diff shows no change.
    assert env.raw_stream(first)[0] == 0
    diffed = env.cli("replay", "sales", "--run", first, "--diff", "--sample", "5", "--json").json()
    assert diffed["status"] == "completed" and diffed["parent_run_id"] == first
    d = diffed["diff"]
    assert (d["added"], d["removed"], d["changed"]) == (0, 0, 0) and d["unchanged"] == RECORDS, d
    replay = env.cli("replay", "sales", "--run", first, "--json").json()
    assert replay["status"] == "completed"
    after = env.rows()
    assert sorted(after[replay["run_id"]]) == sorted(inputs[0])  # exactly the parent's rows, from the archive
    assert first not in after  # the replay superseded the parent's parts: nothing loaded twice
    assert sorted(i for ids in after.values() for i in ids) == sorted(i for ids in inputs.values() for i in ids)

    health = env.cli("health", "--json", ok=False).json()
    raw_now = next(c for c in health["checks"] if c["name"] == "JETL_RAW")
    assert raw_now["status"] == "ok" and "of 64.0 KiB used" in raw_now["detail"]
