"""One run's log lines, as every service shipped them to JETL_LOGS (`jetl logs` prints them)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from typing import Any

import orjson

from jetl import subjects
from jetl.bus import nats_connection, riding_connection
from jetl.errors import NoDeployment
from jetl.eventlog import tail
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.topology import EPHEMERAL_INACTIVE_S, server_url

REORDER_WINDOW = 1000
"""Lines held to put the kept lines in time order: services ship concurrently, so the stream's order is close to,
not exactly, time order. Memory stays bounded by this, whatever the run logged."""


async def read_logs(
    s: JetlSettings,
    run_id: str,
    pipeline: str | None,
    *,
    follow: bool,
    follow_seconds: float | None,
    on_line: Any,
    progress: Any = None,
    limit: int | None = None,
) -> int:
    """Feed one run's shipped log lines to `on_line` as they are read: the kept ones in time order (within
    REORDER_WINDOW lines), stopping after `limit` of them, then (follow) live ones. Returns the lines fed."""
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    nc = await (riding_connection(s) if follow else nats_connection(s))  # a follower rides through a NATS restart
    try:
        js = nc.jetstream()
        subject = subjects.pattern(Kind.LOGS, pipeline, run_id)
        try:
            info = await js.stream_info(subjects.stream_name(Kind.LOGS), subjects_filter=subject)
        except NotFoundError:
            raise NoDeployment(server_url(nc, s.nats.url)) from None  # the wrong server: exit 3, as every command
        kept = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        if limit is not None:
            kept = min(kept, limit)
        sub = await js.subscribe(
            subject,
            ordered_consumer=True,
            stream=subjects.stream_name(Kind.LOGS),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=EPHEMERAL_INACTIVE_S),
        )
        window: list[tuple[str, int, dict[str, Any]]] = []
        count = read = 0
        last = 0  # the last stream sequence read: following resumes after it

        def emit(line: dict[str, Any]) -> None:
            nonlocal count
            on_line(line)
            count += 1

        try:
            while read < kept:
                try:
                    msg = await sub.next_msg(timeout=2.0)
                except Exception:
                    break
                last = msg.metadata.sequence.stream
                line = orjson.loads(msg.data)
                heapq.heappush(window, (str(line.get("timestamp", "")), read, line))
                read += 1
                if len(window) > REORDER_WINDOW:
                    emit(heapq.heappop(window)[2])
                if progress is not None:
                    progress(read, kept)
                if msg.metadata.num_pending == 0:
                    break
            while window:
                emit(heapq.heappop(window)[2])
            if follow:
                await sub.unsubscribe()
                live = tail(nc, Kind.LOGS, subject, after=last, idle=0.5)
                try:
                    async with asyncio.timeout(follow_seconds):
                        async for msg in live:
                            emit(orjson.loads(msg.data))
                except TimeoutError:
                    pass  # --for ran out
                finally:
                    await live.aclose()
            return count
        finally:
            with contextlib.suppress(Exception):  # already unsubscribed when following
                await sub.unsubscribe()
    finally:
        await nc.close()
