"""One run's log lines, as every service shipped them to JETL_LOGS (`jetl logs` prints them)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from jetl import subjects
from jetl._internal.connect import nats_connection, riding_connection
from jetl.errors import ConfigError
from jetl.eventlog import tail
from jetl.settings import JetlSettings
from jetl.subjects import Kind


async def read_logs(
    s: JetlSettings,
    run_id: str,
    pipeline: str | None,
    *,
    follow: bool,
    follow_seconds: float | None,
    on_line: Any,
    progress: Any = None,
) -> int:
    """Feed one run's shipped log lines to `on_line`: the kept ones sorted by time, then (follow) live ones."""
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    nc = await (riding_connection(s) if follow else nats_connection(s))  # a follower rides through a NATS restart
    try:
        js = nc.jetstream()
        subject = subjects.pattern(Kind.LOGS, pipeline, run_id)
        try:
            info = await js.stream_info(subjects.stream_name(Kind.LOGS), subjects_filter=subject)
        except NotFoundError:
            raise ConfigError("the JETL_LOGS stream does not exist (run `jetl deploy`)") from None
        kept = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        sub = await js.subscribe(
            subject,
            ordered_consumer=True,
            stream=subjects.stream_name(Kind.LOGS),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        lines: list[dict[str, Any]] = []
        last = 0  # the last stream sequence read: following resumes after it
        try:
            while kept and len(lines) < kept:
                try:
                    msg = await sub.next_msg(timeout=2.0)
                except Exception:
                    break
                last = msg.metadata.sequence.stream
                lines.append(orjson.loads(msg.data))
                if progress is not None:
                    progress(len(lines), kept)
                if msg.metadata.num_pending == 0:
                    break
            lines.sort(key=lambda x: str(x.get("timestamp", "")))
            for line in lines:
                on_line(line)
            count = len(lines)
            if follow:
                await sub.unsubscribe()
                live = tail(nc, Kind.LOGS, subject, after=last, idle=0.5)
                try:
                    async with asyncio.timeout(follow_seconds):
                        async for msg in live:
                            on_line(orjson.loads(msg.data))
                            count += 1
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
