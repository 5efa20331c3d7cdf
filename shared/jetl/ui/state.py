"""What the dashboard process keeps while it runs: one NATS connection (a JetlClient), the state bucket, the pipelines
of the local folder, and the dead-letter summary that a background task keeps up to date."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from jetl.eventlog import read_from
from jetl.ops.client import JetlClient
from jetl.ops.deadletters import DeadLetterSummary
from jetl.projection import RunState
from jetl.settings import JetlSettings

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from jetl.pipeline import Pipeline


class RunIndex:
    """Every run in the state bucket by its latest stream sequence, with its pipeline and status: the runs page of a
    status pages through this instead of scanning states for a rare one.

    Fed by following the bucket's stream forward (its latest revision per key, so one entry per run the bucket
    keeps: it is as bounded as the bucket), a step at a time by the dashboard's background task.
    """

    def __init__(self) -> None:
        self.runs: dict[str, tuple[int, str, str]] = {}
        """Bucket key -> (stream sequence of its latest state, pipeline, status)."""
        self.last_seq = 0
        self.complete = False
        """Whether the index has caught up with the bucket's stream once (until then pages scan)."""

    async def refresh(self, nc: Any, kv: KeyValue, step: int = 5_000) -> bool:
        """Read up to `step` states changed since the last refresh; returns whether it has caught up."""
        msgs = await read_from(nc, kv._stream, f"{kv._pre}run.>", self.last_seq + 1, step)
        for m in msgs:
            key = m.subject.removeprefix(kv._pre)
            seq = m.metadata.sequence.stream
            self.last_seq = max(self.last_seq, seq)
            if not m.data:  # a deleted or purged key leaves an empty marker
                self.runs.pop(key, None)
                continue
            try:
                status = str(orjson.loads(m.data).get("status", ""))
            except orjson.JSONDecodeError:
                continue
            self.runs[key] = (seq, key.split(".", 2)[1], status)
        self.complete = self.complete or len(msgs) < step
        return len(msgs) < step

    def page(self, pipeline: str | None, status: str, limit: int, before: int | None) -> tuple[list[int], int | None]:
        """The stream sequences of one page of runs with this status (latest first), and the `before` of the next."""
        seqs = sorted(
            (
                seq
                for seq, pipe, st in self.runs.values()
                if st == status and (pipeline is None or pipe == pipeline) and (before is None or seq < before)
            ),
            reverse=True,
        )
        page = seqs[:limit]
        return page, (page[-1] if len(seqs) > limit else None)


async def states_at(nc: Any, kv: KeyValue, seqs: list[int]) -> list[tuple[int, RunState]]:
    """The run states at these sequences of the bucket's stream (one direct read each, in flight together); a state
    changed since (its sequence gone) is left out: the index follows it to its new sequence."""
    from nats.js.errors import NotFoundError

    js = nc.jetstream()

    async def one(seq: int) -> tuple[int, RunState] | None:
        with contextlib.suppress(NotFoundError):
            msg = await js.get_msg(kv._stream, seq=seq)
            if msg.data:
                return seq, RunState.model_validate_json(msg.data)
        return None

    found = await asyncio.gather(*(one(q) for q in seqs))
    return [x for x in found if x is not None]


PIPELINES_TTL = 10.0
"""Seconds the pipelines found in the folder are reused before the folder is read again."""


class Dashboard:
    """The dashboard's connection and caches (one per server process): every page and action uses its one
    JetlClient, never a connection of its own."""

    def __init__(self, settings: JetlSettings) -> None:
        self.settings = settings
        self.client = JetlClient(settings)
        self.kv: KeyValue | None = None
        self.letters = DeadLetterSummary()
        self._letters_lock = asyncio.Lock()
        self.run_index = RunIndex()
        self._runs_lock = asyncio.Lock()
        self._pipelines: tuple[float, dict[str, Pipeline], dict[str, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[Any]] = set()
        """Long actions (a backfill waits for its runs) that outlive their request."""

    async def start(self) -> None:
        """Connect, and start following JETL_DLQ for the summary and the state bucket for the run index."""
        await self.client.__aenter__()
        self.kv = await self.client.kv()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop the background work and disconnect."""
        for task in [self._task, *self.background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self.client.__aexit__(None, None, None)

    @property
    def nc(self) -> Any:
        """The nats-py connection."""
        return self.client.conn

    @property
    def bucket(self) -> KeyValue:
        """The state bucket."""
        assert self.kv is not None, "the dashboard has not started"
        return self.kv

    async def refresh_letters(self, step: int = 2_000) -> DeadLetterSummary:
        """Catch the summary up by at most `step` letters (a page calls this; the background task does the rest)."""
        async with self._letters_lock:
            await self.letters.refresh(self.client, step)
        return self.letters

    async def refresh_runs(self, step: int = 2_000) -> RunIndex:
        """Catch the run index up by at most `step` states (a page calls this; the background task does the rest)."""
        async with self._runs_lock:
            await self.run_index.refresh(self.nc, self.bucket, step)
        return self.run_index

    async def _follow(self) -> None:
        while True:
            try:
                async with self._letters_lock:
                    done = await self.letters.refresh(self.client, 5_000)
                async with self._runs_lock:
                    done = await self.run_index.refresh(self.nc, self.bucket, 5_000) and done
            except Exception:  # NATS went away for a moment: the next round reads from the same sequence
                done = True
            await asyncio.sleep(1.0 if done else 0)

    def pipelines(self) -> tuple[dict[str, Pipeline], dict[str, str]]:
        """The pipelines of the local folder (and {file: error} of broken modules), read again every few seconds."""
        from pathlib import Path

        from jetl.registry import discover_report

        now = time.monotonic()
        if self._pipelines is None or now - self._pipelines[0] > PIPELINES_TTL:
            folder = Path(self.settings.pipelines_dir)
            found, errors = discover_report(folder) if folder.is_dir() else ({}, {})
            self._pipelines = (now, found, errors)
        return self._pipelines[1], self._pipelines[2]

    def spawn(self, coro: Any) -> None:
        """Run an action's long tail in the background, kept referenced until it ends."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
