"""Server-sent events: runs as they change (fed from the lifecycle events on JETL_EVENTS), and one run's log lines
(JETL_LOGS) as they are shipped. The page's own script (static/app.js) puts them in place without a reload.

One run's page reads its events from the stream, from the run's first on: a fast run whose events were all published
between the page's render and the browser's connection still ends on the page as it ended."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from jetl import subjects
from jetl.eventlog import tail
from jetl.events import Event, is_run_event, read_event
from jetl.projection import RunState, fold
from jetl.state import get_run, load_batches
from jetl.subjects import Kind
from jetl.ui.pages import TEMPLATES, batch_progress, dash, stage_counts, verdict

FLUSH_S = 0.4
"""Changes of one run within this long go out as one update."""
KEEPALIVE_S = 15.0


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _stream(gen: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _run_update(st: RunState) -> bytes:
    """A `run` event: the run's table row rendered again, and what its own page shows of it."""
    return _sse(
        "run",
        {
            "id": f"run-{st.pipeline}-{st.run_id}",
            "html": TEMPLATES.get_template("_run_row.html").render(st=st),
            "status": st.status,
            "counts": stage_counts(st),
            "batches": batch_progress(st),
            "verdict": verdict(st),
        },
    )


async def _feed(
    queue: asyncio.Queue[Any], apply: Callable[[list[Event]], Awaitable[list[RunState]]]
) -> AsyncIterator[bytes]:
    """The SSE body of a runs feed: the run events among the (subject, data) messages `queue` holds, a batch per
    FLUSH_S, go through `apply`, and each run it returns goes out as a `run` event (a keepalive after KEEPALIVE_S of
    nothing). An event its subject's role may not say is left out, as the tracker leaves it out."""
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
        events: list[Event] = []
        for subject, data in batch:
            with contextlib.suppress(ValueError):
                ev = read_event(subject, data)
                if ev is not None and is_run_event(ev):
                    events.append(ev)
        for st in await apply(events):
            yield _run_update(st)


async def run_stream(request: Request, pipeline: str, run_id: str) -> Response:
    """`run` events of one run (its page): its events from the stream, the run's first one on, folded here.

    Not the tracker's state plus what is published after the browser connects: whatever was published in between
    would be missed (a fast run stayed "requested" on a page opened just before it). A run whose first events the
    stream no longer keeps is left as the page rendered it."""
    d = dash(request)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    st = RunState(pipeline=pipeline, run_id=run_id)

    async def pump() -> None:
        async for msg in tail(d.nc, Kind.EVENTS, subjects.pattern(Kind.EVENTS, pipeline, run_id)):
            await queue.put((msg.subject, msg.data))

    async def apply(events: list[Event]) -> list[RunState]:
        nonlocal st
        for ev in events:
            st = fold(st, ev)
        return [st] if st.requested_at is not None or st.started_at is not None else []

    async def gen() -> AsyncIterator[bytes]:
        reader = asyncio.create_task(pump())
        try:
            async for chunk in _feed(queue, apply):
                yield chunk
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    return _stream(gen())


async def runs_stream(request: Request) -> Response:
    """`run` events, each a run's table row rendered again, for every run of the filter that changes."""
    d = dash(request)
    pipeline = request.query_params.get("pipeline") or None
    status = request.query_params.get("status") or None
    only = request.query_params.get("run") or None
    if pipeline and only:
        return await run_stream(request, pipeline, only)
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=10_000)
    states: dict[tuple[str, str], RunState] = {}

    async def on_msg(msg: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait((msg.subject, msg.data))

    async def apply(events: list[Event]) -> list[RunState]:
        changed: dict[tuple[str, str], RunState] = {}
        for ev in events:
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
        return [st for st in changed.values() if not status or st.status == status]

    # a plain subscription sees every event as it is published to the stream; no consumer is left on the server
    sub = await d.nc.subscribe(subjects.pattern(Kind.EVENTS, pipeline, only), cb=on_msg)

    async def gen() -> AsyncIterator[bytes]:
        try:
            async for chunk in _feed(queue, apply):
                yield chunk
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
