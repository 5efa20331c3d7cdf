"""One run's log lines, as every service shipped them to JETL_LOGS (`jetl logs` prints them)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from jetl import subjects
from jetl._internal.connect import nats_connection
from jetl.errors import NoDeployment
from jetl.settings import JetlSettings
from jetl.subjects import Kind
from jetl.topology import server_url


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

    nc = await nats_connection(s)
    try:
        js = nc.jetstream()
        subject = subjects.pattern(Kind.LOGS, pipeline, run_id)
        try:
            info = await js.stream_info(subjects.stream_name(Kind.LOGS), subjects_filter=subject)
        except NotFoundError:
            raise NoDeployment(server_url(nc, s.nats.url)) from None  # the wrong server: exit 3, as every command
        kept = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        sub = await js.subscribe(
            subject,
            ordered_consumer=True,
            stream=subjects.stream_name(Kind.LOGS),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        lines: list[dict[str, Any]] = []
        try:
            while kept and len(lines) < kept:
                try:
                    msg = await sub.next_msg(timeout=2.0)
                except Exception:
                    break
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
                deadline = None if follow_seconds is None else time.monotonic() + follow_seconds
                while deadline is None or time.monotonic() < deadline:
                    wait = 1.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
                    try:
                        msg = await sub.next_msg(timeout=wait)
                    except Exception:
                        continue
                    on_line(orjson.loads(msg.data))
                    count += 1
            return count
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
