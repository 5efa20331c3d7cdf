"""One run's log lines, as every service shipped them to JETL_LOGS (`jetl logs` prints them)."""

from __future__ import annotations

import heapq
import time
from typing import Any

import orjson

from jetl import subjects
from jetl._internal.connect import nats_connection
from jetl.errors import ConfigError
from jetl.settings import JetlSettings
from jetl.subjects import Kind

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

    nc = await nats_connection(s)
    try:
        js = nc.jetstream()
        subject = subjects.pattern(Kind.LOGS, pipeline, run_id)
        try:
            info = await js.stream_info(subjects.stream_name(Kind.LOGS), subjects_filter=subject)
        except NotFoundError:
            raise ConfigError("the JETL_LOGS stream does not exist (run `jetl deploy`)") from None
        kept = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        if limit is not None:
            kept = min(kept, limit)
        sub = await js.subscribe(
            subject,
            ordered_consumer=True,
            stream=subjects.stream_name(Kind.LOGS),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        window: list[tuple[str, int, dict[str, Any]]] = []
        count = read = 0

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
                deadline = None if follow_seconds is None else time.monotonic() + follow_seconds
                while deadline is None or time.monotonic() < deadline:
                    wait = 1.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
                    try:
                        msg = await sub.next_msg(timeout=wait)
                    except Exception:
                        continue
                    emit(orjson.loads(msg.data))
            return count
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
