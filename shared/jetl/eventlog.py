"""The event log read back: any stream's messages under a subject filter, the lifecycle events in order, and the
run states (with cursors and the scheduler's indexes) rebuilt from them (`jetl status --rebuild`).

Every read is an ordered consumer: nothing durable is left behind. `tail` follows a stream live and rides through a
NATS restart, resuming after the last sequence it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetl.events import CursorChanged, Event, RunCompleted, is_run_event, read_event
from jetl.projection import RunState, fold
from jetl.state import (
    RUN_TTL_S,
    add_active,
    batch_key,
    bucket,
    bucket_keys,
    delete_cursor,
    mark_finished,
    put_batch,
    put_cursor,
    remove_active,
    run_key,
)
from jetl.subjects import STREAMS, Kind, check_token, pattern
from jetl.topology import EPHEMERAL_INACTIVE_S


async def read_stream(nc: Client, kind: Kind, subject: str, *, timeout: float = 5.0) -> AsyncGenerator[Any, None]:
    """Every message `kind`'s stream keeps under `subject` (a filter), oldest first, then stop.

    An ordered consumer: nothing durable is left behind. This is how the log is read back (replay reads JETL_RAW,
    redrive and `jetl dlq` read JETL_DLQ).
    """
    js = nc.jetstream()
    try:
        info = await js.stream_info(STREAMS[kind].name, subjects_filter=subject)
    except NotFoundError:
        return
    if not info.state.subjects:
        return
    sub = await js.subscribe(
        subject,
        ordered_consumer=True,
        stream=STREAMS[kind].name,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=EPHEMERAL_INACTIVE_S),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except TimeoutError:
                return
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def tail(nc: Client, kind: Kind, subject: str, *, after: int = 0, idle: float = 1.0) -> AsyncGenerator[Any, None]:
    """Every message `kind`'s stream keeps under `subject` with a stream sequence above `after`, then live ones,
    for ever (the caller decides when to stop).

    It rides through a NATS restart: on a reconnect (`nc` must be allowed to reconnect, see
    `jetl.bus.riding_connection`) it subscribes again from the last sequence it yielded + 1, and
    while the server is away, or its JetStream is still recovering, it retries every `idle` seconds. A message is
    never yielded twice: sequences at or below the last one yielded are skipped.
    """
    js = nc.jetstream()
    last = after
    while True:
        if nc.is_closed:
            raise ConnectionError("the NATS connection is closed")
        reconnects = nc.stats["reconnects"]
        start = (
            ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=EPHEMERAL_INACTIVE_S)
            if last == 0
            else ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=last + 1,
                inactive_threshold=EPHEMERAL_INACTIVE_S,
            )
        )
        try:
            sub = await js.subscribe(subject, ordered_consumer=True, stream=STREAMS[kind].name, config=start)
        except Exception:
            if nc.is_closed:
                raise
            await asyncio.sleep(idle)  # disconnected, or JetStream not back yet after a restart
            continue
        try:
            while nc.stats["reconnects"] == reconnects and not nc.is_closed:
                try:
                    msg = await sub.next_msg(timeout=idle)
                except TimeoutError:
                    continue
                except Exception:
                    if nc.is_closed:
                        raise
                    break  # the subscription broke with the connection: subscribe again from `last`
                seq = msg.metadata.sequence.stream
                if seq <= last:
                    continue
                last = seq
                yield msg
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def read_events(
    nc: Client, pipeline: str | None = None, run_id: str | None = None, *, timeout: float = 1.0
) -> AsyncIterator[Event]:
    """Replay the event log (all of it, or one pipeline's or run's) in order, from the stream, without a durable.

    It stops at the last event the filter matches (the consumer's pending count), not at the stream's end. An event
    on the subject of a role that may not say it (`jetl.events.trusted`) is skipped, as the tracker skips it.
    """
    async for msg in read_stream(nc, Kind.EVENTS, pattern(Kind.EVENTS, pipeline, run_id), timeout=timeout):
        ev = read_event(msg.subject, msg.data)
        if ev is not None:
            yield ev


async def _refold(nc: Client, pipeline: str, run_id: str) -> RunState | None:
    state: RunState | None = None
    async for ev in read_events(nc, pipeline, run_id):
        state = fold(state, ev)
    return state


async def rebuild(nc: Client, pipeline: str | None = None, *, ttl: float | None = RUN_TTL_S) -> int:
    """Fold the whole log again into the run states (and cursors); returns the number of events read.

    Safe while the tracker runs: every write is a compare-and-set against the revision seen before the log was
    read, so a state the tracker changed meanwhile is refolded from the log for that run and written again, never
    overwritten with an older fold. Each run's batch ledgers are written to their keys before its totals (a batch
    key never holds less than the log says). States no event explains any more (their events expired) are deleted
    with their batch keys. Nothing is deleted first, so the extractor never sees a completed run as missing and runs
    it again.
    """
    kv = await bucket(nc)
    prefix = f"run.{check_token(pipeline)}." if pipeline else "run."
    revisions: dict[str, int] = {}
    for k in await bucket_keys(kv):
        if k.startswith(prefix):
            try:
                revision = (await kv.get(k)).revision
            except (KeyNotFoundError, NotFoundError):
                continue
            if revision is not None:
                revisions[k] = revision
    states: dict[tuple[str, str], RunState] = {}
    cursors: dict[str, dict[str, Any] | None] = {}
    """Per pipeline, the cursor the latest change left, in log order: a completed run's, or an operator's."""
    n = 0
    async for ev in read_events(nc, pipeline):
        n += 1
        if isinstance(ev, CursorChanged):  # an operator's change names no run
            cursors[ev.pipeline] = ev.cursor
            continue
        if not is_run_event(ev):
            continue
        key = (ev.pipeline, ev.run_id)
        states[key] = fold(states.get(key), ev)
        if isinstance(ev, RunCompleted) and states[key].cursor is not None:
            cursors[ev.pipeline] = states[key].cursor
    for (p, r), st in states.items():
        for batch_id, b in st.batches.items():
            await put_batch(kv, batch_key(p, r, batch_id), b, ttl)
        await _write_state(nc, kv, p, r, st, revisions.pop(run_key(p, r), None), ttl)
    for k, rev in revisions.items():  # folded states whose events are gone from the log
        try:
            await kv.delete(k, last=rev)
        except Exception as exc:  # the tracker wrote it meanwhile: an event explains it after all, keep it
            if not isinstance(exc, KeyWrongLastSequenceError) and "wrong last sequence" not in str(exc):
                raise
            continue
        for bk in await bucket_keys(kv, "batch." + k.removeprefix("run.") + ".>"):
            await kv.delete(bk)
    for p, cursor in cursors.items():
        if cursor is None:
            await delete_cursor(kv, p)
        else:
            await put_cursor(kv, p, cursor)
    await _rebuild_indexes(kv, states)
    return n


async def _rebuild_indexes(kv: KeyValue, states: dict[tuple[str, str], RunState]) -> None:
    """The keys the scheduler and `jetl health` read, from the refolded states: each pipeline's latest success and
    failure (a mark never moves backwards), and its unfinished runs."""
    oldest = datetime.min.replace(tzinfo=UTC)
    latest: dict[tuple[str, str], RunState] = {}
    finished: dict[str, list[str]] = {}
    for (p, r), st in states.items():
        if st.status in ("completed", "failed"):
            finished.setdefault(p, []).append(r)
            prev = latest.get((p, st.status))
            if prev is None or (st.finished_at or oldest) > (prev.finished_at or oldest):
                latest[(p, st.status)] = st
        elif st.requested_at is not None:
            await add_active(kv, p, r, st.requested_at)
    for st in latest.values():
        await mark_finished(kv, st)
    for p, runs in finished.items():
        await remove_active(kv, p, runs)


async def _write_state(
    nc: Client,
    kv: KeyValue,
    pipeline: str,
    run_id: str,
    state: RunState | None,
    revision: int | None,
    ttl: float | None,
) -> None:
    """Write one refolded state with compare-and-set; on a concurrent write, refold that run from the log again."""
    key = run_key(pipeline, run_id)
    for _ in range(20):
        if state is None:
            return
        try:
            if revision is None:
                await kv.create(key, state.model_dump_json().encode(), msg_ttl=ttl)
            else:
                await kv.update(key, state.model_dump_json().encode(), last=revision, msg_ttl=ttl)
            return
        except Exception as exc:
            if not isinstance(exc, KeyWrongLastSequenceError) and "wrong last sequence" not in str(exc):
                raise
        try:
            revision = (await kv.get(key)).revision
        except (KeyNotFoundError, NotFoundError):
            revision = None
        state = await _refold(nc, pipeline, run_id)
        for batch_id, b in state.batches.items() if state is not None else ():
            await put_batch(kv, batch_key(pipeline, run_id, batch_id), b, ttl)
    raise RuntimeError(f"could not rebuild {key}: too many concurrent writers")


async def read_from(
    nc: Client, stream: str, subject: str, start_seq: int, limit: int, *, until_seq: int | None = None
) -> list[Any]:
    """Up to `limit` messages of `stream` under `subject`, from sequence `start_seq` on (and not past `until_seq`).

    One page of a long stream without reading the rest of it: an ephemeral pull consumer starts at the sequence,
    and its pending count says how many messages there are to fetch, so an empty page costs no wait.
    """
    from nats.js.api import AckPolicy

    js = nc.jetstream()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start_seq),
        filter_subject=subject,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,  # removed below; this only covers a reader that died midway
        mem_storage=True,
        num_replicas=1,
    )
    try:
        info = await js.add_consumer(stream, config)
    except NotFoundError:
        return []
    out: list[Any] = []
    try:
        want = min(limit, info.num_pending or 0)
        if want <= 0:
            return out
        psub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            while len(out) < want:
                try:
                    msgs = await psub.fetch(min(want - len(out), 256), timeout=5.0)
                except TimeoutError:
                    break
                for m in msgs:
                    if until_seq is not None and m.metadata.sequence.stream > until_seq:
                        return out
                    out.append(m)
        finally:
            await psub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)
    return out


async def recent_runs(
    nc: Client,
    kv: KeyValue,
    pipeline: str | None = None,
    *,
    limit: int = 50,
    before: int | None = None,
    status: str | None = None,
    max_scan: int = 20_000,
) -> tuple[list[tuple[int, RunState]], int | None]:
    """One page of run states, most recently changed first, and the `before` of the next page (None: no more).

    A bounded listing for a dashboard over thousands of runs: the bucket's stream keeps one message per key (its
    latest revision), so reading it backwards from its last sequence, in growing windows, meets the runs that
    changed last first. At most `max_scan` states are read for one page however rare `status` is. Each run is
    returned with the stream sequence of its state, which `before` pages by.
    """
    js, stream, prefix = kv._js, kv._stream, kv._pre
    info = await js.stream_info(stream)
    first = info.state.first_seq or 1
    hi = min(before - 1, info.state.last_seq) if before else info.state.last_seq
    subject = f"{prefix}run.{check_token(pipeline)}.>" if pipeline else f"{prefix}run.>"
    wanted = f'"status":"{status}"'.encode() if status else None
    out: list[tuple[int, RunState]] = []
    window, scanned = max(4 * limit, 256), 0
    while hi >= first and len(out) < limit and scanned < max_scan:
        window = min(window, max_scan - scanned)
        lo = max(first, hi - window + 1)
        msgs = await read_from(nc, stream, subject, lo, window, until_seq=hi)
        scanned += len(msgs)
        for m in reversed(msgs):
            # deleted keys leave an empty marker; the status is checked on the raw JSON before parsing a state
            if m.data and (wanted is None or wanted in m.data):
                out.append((m.metadata.sequence.stream, RunState.model_validate_json(m.data)))
                if len(out) == limit:
                    break
        hi, window = lo - 1, window * 2
    more = len(out) == limit or (hi >= first and scanned >= max_scan)
    next_before = (out[-1][0] if out and len(out) == limit else hi + 1) if more else None
    return out, next_before
