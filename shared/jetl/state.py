"""The run-state store: folded run states and incremental cursors in a NATS KV bucket, rebuildable from the log.

Keys: `run.<pipeline>.<run_id>` -> RunState JSON; `cursor.<pipeline>` -> the cursor of the latest completed run.
The tracker (in the scheduler service) is the writer; it updates with compare-and-set so replicas can share it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetl.events import Event, parse_event
from jetl.projection import RunState, fold
from jetl.subjects import Kind, check_token, pattern, stream_name

BUCKET = "JETL_STATE"


async def bucket(nc: Client, *, create: bool = True) -> KeyValue:
    """The state bucket, created if missing."""
    js = nc.jetstream()
    try:
        return await js.key_value(BUCKET)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            raise
        return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE))


def run_key(pipeline: str, run_id: str) -> str:
    """KV key of a run's state."""
    return f"run.{check_token(pipeline)}.{check_token(run_id)}"


def cursor_key(pipeline: str) -> str:
    """KV key of a pipeline's incremental cursor."""
    return f"cursor.{check_token(pipeline)}"


async def get_run(kv: KeyValue, pipeline: str, run_id: str) -> RunState | None:
    """A run's folded state, or None."""
    try:
        entry = await kv.get(run_key(pipeline, run_id))
    except (KeyNotFoundError, NotFoundError):
        return None
    return RunState.model_validate_json(entry.value) if entry.value else None


async def apply(kv: KeyValue, ev: Event) -> RunState:
    """Fold one event into its run's state with compare-and-set (retried on a concurrent write)."""
    key = run_key(ev.pipeline, ev.run_id)
    for _ in range(50):
        try:
            entry = await kv.get(key)
            state = RunState.model_validate_json(entry.value) if entry.value else None
            revision = entry.revision
        except (KeyNotFoundError, NotFoundError):
            state, revision = None, None
        state = fold(state, ev)
        data = state.model_dump_json().encode()
        try:
            if revision is None:
                await kv.create(key, data)
            else:
                await kv.update(key, data, last=revision)
            return state
        except (KeyWrongLastSequenceError, Exception) as exc:
            if not isinstance(exc, KeyWrongLastSequenceError) and "wrong last sequence" not in str(exc):
                raise
    raise RuntimeError(f"could not update {key}: too many concurrent writers")


async def get_cursor(kv: KeyValue, pipeline: str) -> dict[str, Any] | None:
    """The cursor the latest completed run left."""
    try:
        entry = await kv.get(cursor_key(pipeline))
    except (KeyNotFoundError, NotFoundError):
        return None
    value: dict[str, Any] | None = orjson.loads(entry.value) if entry.value else None
    return value


async def put_cursor(kv: KeyValue, pipeline: str, cursor: dict[str, Any] | None) -> None:
    """Advance a pipeline's cursor (only ever called for a completed run)."""
    if cursor is not None:
        await kv.put(cursor_key(pipeline), orjson.dumps(cursor))


async def list_runs(kv: KeyValue, pipeline: str | None = None) -> list[RunState]:
    """Every run state kept, newest first."""
    try:
        keys = await kv.keys()
    except Exception:
        return []
    prefix = f"run.{pipeline}." if pipeline else "run."
    out: list[RunState] = []
    for k in keys:
        if k.startswith(prefix):
            entry = await kv.get(k)
            if entry.value:
                out.append(RunState.model_validate_json(entry.value))

    def when(st: RunState) -> float:
        moment = st.requested_at or st.started_at or st.finished_at
        return moment.timestamp() if moment else 0.0

    out.sort(key=when, reverse=True)
    return out


async def read_events(
    nc: Client, pipeline: str | None = None, run_id: str | None = None, *, timeout: float = 1.0
) -> AsyncIterator[Event]:
    """Replay the event log (all of it, or one pipeline's or run's) in order, from the stream, without a durable."""
    js = nc.jetstream()
    subject = pattern(Kind.EVENTS, pipeline, run_id)
    try:
        info = await js.stream_info(stream_name(Kind.EVENTS), subjects_filter=subject)
        last = info.state.last_seq
    except NotFoundError:
        return
    if not info.state.messages:
        return
    sub = await js.subscribe(subject, ordered_consumer=True, stream=stream_name(Kind.EVENTS))
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except TimeoutError:
                return
            yield parse_event(msg.data)
            if msg.metadata.sequence.stream >= last:
                return
    finally:
        await sub.unsubscribe()


async def rebuild(nc: Client, pipeline: str | None = None) -> int:
    """Drop the folded states and fold the whole log again; returns the number of events read."""
    kv = await bucket(nc)
    states: dict[tuple[str, str], RunState] = {}
    n = 0
    async for ev in read_events(nc, pipeline):
        key = (ev.pipeline, ev.run_id)
        states[key] = fold(states.get(key), ev)
        n += 1
    for k in await _keys(kv):
        if k.startswith("run.") and (pipeline is None or k.startswith(f"run.{pipeline}.")):
            await kv.delete(k)
    latest_cursor: dict[str, RunState] = {}
    for (p, r), st in states.items():
        await kv.put(run_key(p, r), st.model_dump_json().encode())
        if st.status == "completed" and st.cursor is not None:
            prev = latest_cursor.get(p)
            if prev is None or (st.finished_at and prev.finished_at and st.finished_at > prev.finished_at):
                latest_cursor[p] = st
    for p, st in latest_cursor.items():
        await put_cursor(kv, p, st.cursor)
    return n


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except Exception:
        return []
