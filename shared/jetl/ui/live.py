"""Server-sent events: runs as they change (fed from the lifecycle events on JETL_EVENTS), and one run's log lines
(JETL_LOGS) as they are shipped. The page's own script (static/app.js) puts them in place without a reload."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from jetl import subjects
from jetl.events import is_run_event, parse_event
from jetl.projection import RunState, fold
from jetl.state import get_run, load_batches
from jetl.subjects import Kind
from jetl.ui.pages import TEMPLATES, dash, stage_counts

FLUSH_S = 0.4
"""Changes of one run within this long go out as one update."""
KEEPALIVE_S = 15.0


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _stream(gen: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def runs_stream(request: Request) -> Response:
    """`run` events, each a run's table row rendered again, for every run of the filter that changes."""
    d = dash(request)
    pipeline = request.query_params.get("pipeline") or None
    status = request.query_params.get("status") or None
    only = request.query_params.get("run") or None
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)

    async def on_msg(msg: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(msg.data)

    # a plain subscription sees every event as it is published to the stream; no consumer is left on the server
    sub = await d.nc.subscribe(subjects.pattern(Kind.EVENTS, pipeline, only), cb=on_msg)
    row = TEMPLATES.get_template("_run_row.html")

    async def gen() -> AsyncIterator[bytes]:
        states: dict[tuple[str, str], RunState] = {}
        try:
            yield b": connected\n\n"
            while True:
                try:
                    first = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                batch = [first]
                await asyncio.sleep(FLUSH_S)
                while not queue.empty():
                    batch.append(queue.get_nowait())
                changed: dict[tuple[str, str], RunState] = {}
                for data in batch:
                    try:
                        ev = parse_event(data)
                    except ValueError:
                        continue
                    if not is_run_event(ev):
                        continue
                    key = (ev.pipeline, ev.run_id)
                    if key not in states:  # the tracker's fold so far; this event may be in it already
                        known = await get_run(d.bucket, *key)
                        # with its batch ledgers, so folding an event the tracker already counted changes nothing
                        # (the run state alone holds totals: a batch it lacks would be counted twice)
                        states[key] = (
                            await load_batches(d.bucket, known)
                            if known is not None
                            else RunState(pipeline=ev.pipeline, run_id=ev.run_id)
                        )
                    states[key] = changed[key] = fold(states[key], ev)
                for st in changed.values():
                    if status and st.status != status:
                        continue
                    html = row.render(st=st)
                    counts = stage_counts(st)
                    yield _sse(
                        "run",
                        {"id": f"run-{st.pipeline}-{st.run_id}", "html": html, "status": st.status, "counts": counts},
                    )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return _stream(gen())


async def logs_stream(request: Request) -> Response:
    """`log` events: one run's shipped log lines, those kept first, then as they come."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    d = dash(request)
    pipeline, run_id = request.path_params["pipeline"], request.path_params["run_id"]
    js = d.nc.jetstream()
    sub = await js.subscribe(
        subjects.pattern(Kind.LOGS, pipeline, run_id),
        ordered_consumer=True,
        stream=subjects.stream_name(Kind.LOGS),
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )

    async def gen() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while True:
                try:
                    msg = await sub.next_msg(timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                try:
                    line = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    continue
                yield _sse(
                    "log",
                    {
                        "t": str(line.get("timestamp", ""))[11:23],
                        "level": str(line.get("level", "")),
                        "service": str(line.get("service", "")),
                        "event": str(line.get("event", "")),
                        "batch": str(line.get("batch_id", "") or ""),
                    },
                )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return _stream(gen())
