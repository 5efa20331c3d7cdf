"""A client for people and scripts: request runs, follow them through the event log, read dead letters.

The CLI is a thin layer over this; tests and notebooks can use it directly:

    async with JetlClient(settings) as jc:
        req = await jc.request_run("orders")
        state = await jc.wait(req.pipeline, req.run_id)
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from jetl import subjects
from jetl.bus import Bus, connect, make_broker
from jetl.errors import TransientError
from jetl.events import Event, RunCompleted, RunFailed, parse_event
from jetl.messages import DeadLetter, RunRequest, Trigger
from jetl.projection import RunState, fold
from jetl.settings import JetlSettings
from jetl.subjects import Kind


def manual_run_id(pipeline: str) -> str:
    """A fresh run id for a manual run: `<pipeline>-m<UTC stamp><random>`."""
    return f"{pipeline}-m{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}{secrets.token_hex(2)}"


class JetlClient:
    """Connected to NATS (plain nats-py for reads, FastStream broker for publishes)."""

    def __init__(self, settings: JetlSettings | None = None) -> None:
        self.settings = settings or JetlSettings()
        self.nc: Client | None = None
        self.broker = make_broker(self.settings.nats)
        self.bus = Bus(self.broker)

    async def __aenter__(self) -> JetlClient:
        try:
            self.nc = await connect(self.settings.nats, allow_reconnect=False, max_reconnect_attempts=1)
        except Exception as exc:
            raise TransientError(f"cannot reach NATS at {self.settings.nats.url}: {type(exc).__name__} {exc}") from exc
        await self.broker.connect()
        from jetl.bus import declare

        await declare(self.nc, self.settings.nats)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()
        if self.nc is not None:
            await self.nc.close()

    @property
    def conn(self) -> Client:
        """The nats-py connection."""
        assert self.nc is not None, "use `async with JetlClient(...)`"
        return self.nc

    async def request_run(
        self,
        pipeline: str,
        *,
        run_id: str | None = None,
        trigger: Trigger = "manual",
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
        parent_run_id: str | None = None,
        params: dict[str, Any] | None = None,
        force: bool = False,
        code_hash: str = "",
    ) -> RunRequest:
        """Queue one run (run.requested is logged first)."""
        req = RunRequest(
            pipeline=pipeline,
            run_id=run_id or manual_run_id(pipeline),
            trigger=trigger,
            data_interval_start=data_interval_start,
            data_interval_end=data_interval_end,
            parent_run_id=parent_run_id,
            params=params or {},
            force=force,
        )
        await self.bus.request(req, code_hash=code_hash)
        return req

    async def follow(self, pipeline: str, run_id: str | None = None) -> AsyncIterator[Event]:
        """Every event of a run (or of a pipeline's runs), from the beginning of the log, then live."""
        js = self.conn.jetstream()
        sub = await js.subscribe(
            subjects.pattern(Kind.EVENTS, pipeline, run_id),
            ordered_consumer=True,
            stream=subjects.stream_name(Kind.EVENTS),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=3600)
                except TimeoutError:
                    continue
                yield parse_event(msg.data)
        finally:
            await sub.unsubscribe()

    async def wait(
        self,
        pipeline: str,
        run_id: str,
        *,
        timeout: float = 600.0,
        on_event: Callable[[Event, RunState], None] | None = None,
    ) -> RunState:
        """Fold a run's events until it completes or fails; returns its state."""
        state: RunState | None = None

        async def _consume() -> RunState:
            nonlocal state
            async for ev in self.follow(pipeline, run_id):
                state = fold(state, ev)
                if on_event is not None:
                    on_event(ev, state)
                if isinstance(ev, (RunCompleted, RunFailed)):
                    return state
            raise AssertionError("unreachable")

        try:
            return await asyncio.wait_for(_consume(), timeout)
        except TimeoutError as exc:
            got = state.counts() if state else "no events"
            raise TransientError(
                f"run {run_id} did not finish within {timeout:.0f}s (so far: {got}); "
                "are the services up? (`jetl up`, `jetl health`)"
            ) from exc

    async def run_state(self, pipeline: str, run_id: str) -> RunState | None:
        """The folded state of one run, from the log itself."""
        from jetl.state import read_events

        state: RunState | None = None
        async for ev in read_events(self.conn, pipeline, run_id):
            state = fold(state, ev)
        return state

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead letters kept for a pipeline (or all), oldest first."""
        js = self.conn.jetstream()
        subject = subjects.pattern(Kind.DLQ, pipeline)
        try:
            info = await js.stream_info(subjects.stream_name(Kind.DLQ), subjects_filter=subject)
        except NotFoundError:
            return []
        if not info.state.messages:
            return []
        out: list[DeadLetter] = []
        sub = await js.subscribe(subject, ordered_consumer=True, stream=subjects.stream_name(Kind.DLQ))
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except TimeoutError:
                    break
                out.append(DeadLetter.model_validate_json(msg.data))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return out
