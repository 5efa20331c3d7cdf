"""What the dashboard process keeps while it runs: one NATS connection (a JetlClient), the state bucket, the pipelines
of the local folder, and the dead-letter summary that a background task keeps up to date."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from jetl.client import JetlClient
from jetl.deadletters import DeadLetterSummary
from jetl.settings import JetlSettings
from jetl.state import bucket

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from jetl.pipeline import Pipeline

PIPELINES_TTL = 10.0
"""Seconds the pipelines found in the folder are reused before the folder is read again."""


class Dashboard:
    """The dashboard's connection and caches (one per server process)."""

    def __init__(self, settings: JetlSettings) -> None:
        self.settings = settings
        self.client = JetlClient(settings)
        self.kv: KeyValue | None = None
        self.letters = DeadLetterSummary()
        self._letters_lock = asyncio.Lock()
        self._pipelines: tuple[float, dict[str, Pipeline], dict[str, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[Any]] = set()
        """Long actions (a backfill waits for its runs) that outlive their request."""

    async def start(self) -> None:
        """Connect, and start following JETL_DLQ for the summary."""
        await self.client.__aenter__()
        self.kv = await bucket(self.client.conn)
        self._task = asyncio.create_task(self._follow_letters())

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
            await self.letters.refresh(self.nc, step)
        return self.letters

    async def _follow_letters(self) -> None:
        while True:
            try:
                async with self._letters_lock:
                    done = await self.letters.refresh(self.nc, 5_000)
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
