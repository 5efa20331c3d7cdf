"""The run-state store: folded run states and incremental cursors in a NATS KV bucket, rebuildable from the log.

Keys: `run.<pipeline>.<run_id>` -> RunState JSON (the run's totals: O(1) in size); `batch.<pipeline>.<run_id>.<batch>`
-> one batch's BatchState; `cursor.<pipeline>` -> the cursor of the latest completed run. The tracker (in the
scheduler service) is the writer; it updates with compare-and-set so replicas can share it.

Run and batch keys expire `NatsSettings.run_state_ttl_days` after their last write (a per-key TTL, `Nats-TTL`; the
log rebuilds them), heartbeats after `heartbeat_ttl_s`. Cursors, pause flags and the scheduler's marks never expire.

Operational keys in the same bucket (all rebuildable or harmless to lose). Each prefix is a `jetl.subjects.StateKey`,
and NATS permissions grant writes by prefix (`jetl.access`): services write only their own heartbeats (and the
extractor the unfinished index); only the scheduler and the operator write run state, cursors and the rest.

| key                        | written by                  | value                                              |
|----------------------------|-----------------------------|----------------------------------------------------|
| `sched.<pipeline>`         | scheduler (cron tick)       | end of the last slot requested (ISO time)          |
| `pause.<pipeline>`         | `jetl pause` / `jetl resume`| `true` / `false`: overrides `Cron(paused=...)`     |
| `active.<pipeline>`        | scheduler (tick, tracker)   | {run_id: requested_at} of runs not yet finished    |
| `ok.<pipeline>`            | tracker                     | RunMark of the latest completed run                |
| `failed.<pipeline>`        | tracker                     | RunMark of the latest failed run                   |
| `svc.<service>.<instance>` | every service, every 5 s    | heartbeat: instance, time, counters                |
| `alert.<pipeline>.<kind>`  | scheduler (alerts)          | the episode last alerted, so replicas alert once   |

The `alert.` key has one user, so it is built beside it (`jetl_scheduler.alerts.alert_key`); `sched.` and `pause.`
stay here because the CLI's `jetl schedule`, `jetl pause` and `jetl resume` read and write them too.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel

from jetl.bucket import bucket as bucket
from jetl.bucket import bucket_keys as bucket_keys
from jetl.bucket import get_run as get_run
from jetl.bucket import read_key as _read
from jetl.bucket import run_key as run_key
from jetl.bucket import run_states
from jetl.connection import NatsSettings
from jetl.errors import Contention
from jetl.events import Event, is_run_event
from jetl.projection import BATCH_EVENTS, BatchState, RunState, fold, fold_batch, fold_run
from jetl.subjects import StateKey, check_token

RUN_TTL_S = NatsSettings().run_state_ttl_days * 86400
"""Seconds a run or batch key lives after its last write."""

T = TypeVar("T")


def cursor_key(pipeline: str) -> str:
    """KV key of a pipeline's incremental cursor."""
    return f"{StateKey.CURSOR}.{check_token(pipeline)}"


def batch_key(pipeline: str, run_id: str, batch_id: str) -> str:
    """KV key of one batch's ledger: `batch.<pipeline>.<run>.<seq>` (from batch id `<run>/<seq>`, each `/` a `.`)."""
    rest = batch_id.removeprefix(f"{run_id}/")
    return f"{StateKey.BATCH}.{check_token(pipeline)}.{check_token(run_id)}.{rest.replace('/', '.')}"


def _batch_id(state: RunState, key: str) -> str:
    """The batch id a batch key of `state`'s run stands for (`batch_key` backwards)."""
    return f"{state.run_id}/{key.split('.', 3)[3].replace('.', '/')}"


def cas_conflict(exc: Exception) -> bool:
    """A compare-and-set lost to a concurrent writer."""
    return isinstance(exc, KeyWrongLastSequenceError) or "wrong last sequence" in str(exc)


CAS_TRIES = 50
"""Tries of one compare-and-set before it gives up as `Contention` (transient: the message is retried later)."""


async def compare_and_set(attempt: Callable[[], Awaitable[T]], what: str, tries: int = CAS_TRIES) -> T:
    """The one retry loop of every compare-and-set on the bucket: run `attempt` (which reads what it needs, then
    writes with compare-and-set) again while a concurrent writer beats it; `Contention` (transient) after `tries`."""
    for _ in range(tries):
        try:
            return await attempt()
        except Exception as exc:
            if not cas_conflict(exc):
                raise
    raise Contention(f"could not update {what}: {tries} tries lost to concurrent writers")


async def _write(kv: KeyValue, key: str, data: bytes, revision: int | None, ttl: float | None) -> int:
    """Create (revision None) or compare-and-set a key, with a per-key TTL when given; returns the new revision."""
    if revision is None:
        return await kv.create(key, data, msg_ttl=ttl)
    return await kv.update(key, data, last=revision, msg_ttl=ttl)


async def get_batch(kv: KeyValue, pipeline: str, run_id: str, batch_id: str) -> BatchState | None:
    """One batch's ledger as its own key holds it, or its finished run's summary (`compact`); None when neither."""
    key = batch_key(pipeline, run_id, batch_id)
    value, _ = await _read(kv, key)
    state = await get_run(kv, pipeline, run_id)
    if state is None:
        return BatchState.model_validate_json(value) if value else None
    if key in state.pending:  # counted, its key not written (yet): the newer of the two
        return state.pending[key]
    if value:
        return BatchState.model_validate_json(value)
    return (await read_summary(kv, state)).get(key) if state.summary else None


def summary_key(pipeline: str, run_id: str, part: int) -> str:
    """KV key of one part of a finished run's batch summary: `sum.<pipeline>.<run>.<part>`."""
    return f"sum.{check_token(pipeline)}.{check_token(run_id)}.{part}"


SUMMARY_BATCHES = 20_000
"""Batch ledgers per summary key: ~2-4 bytes each compressed, well under any `max_payload`."""


def _summary_parts(ledgers: dict[str, BatchState]) -> list[bytes]:
    """Batch ledgers (by batch key) as compressed summary values: the distinct ledgers once, then per batch its key
    suffix, sequence and ledger index (most batches of a run share one ledger, and their suffixes count up)."""
    out: list[bytes] = []
    keys = sorted(ledgers)
    for i in range(0, max(1, len(keys)), SUMMARY_BATCHES):
        distinct: dict[str, int] = {}
        rows: list[tuple[str, int, int]] = []
        for k in keys[i : i + SUMMARY_BATCHES]:
            b = ledgers[k]
            shape = b.model_dump_json(exclude={"seq"})
            rows.append((k.split(".", 3)[3], b.seq, distinct.setdefault(shape, len(distinct))))
        body = {"ledgers": [orjson.loads(x) for x in distinct], "batches": rows}
        out.append(zlib.compress(orjson.dumps(body), 6))
    return out


async def read_summary(kv: KeyValue, state: RunState) -> dict[str, BatchState]:
    """The batch ledgers a finished run's summary keeps, by batch key (empty when it has none)."""
    prefix = f"batch.{check_token(state.pipeline)}.{check_token(state.run_id)}."
    out: dict[str, BatchState] = {}
    for part in range(state.summary):
        value, _ = await _read(kv, summary_key(state.pipeline, state.run_id, part))
        if not value:
            continue
        body = orjson.loads(zlib.decompress(value))
        shapes = body["ledgers"]
        for suffix, seq, i in body["batches"]:
            out[prefix + suffix] = BatchState.model_validate({**shapes[i], "seq": seq})
    return out


PURGED_MARKER_TTL_S = 60.0
"""Seconds the purge marker of a summarized batch key stays (then nothing of it is left in the bucket)."""


async def compact(kv: KeyValue, state: RunState, *, ttl: float | None = RUN_TTL_S) -> int:
    """Fold a finished run's batch keys into its summary (`summary_key`): the summary is written, then the run key
    says so (compare-and-set), then the batch keys are purged (their markers expire after `PURGED_MARKER_TTL_S`).
    A batch's later event (a redelivery) still finds its ledger there, so nothing is counted twice. Returns the
    batches summarized; 0 when the run is not finished or already summarized."""
    if state.status not in ("completed", "failed") or state.summary:
        return 0
    await load_batches(kv, state)
    if state.expected_batches is not None and len(state.batches) < state.expected_batches:
        # a ledger not found (a key still being written beside the fold's last write): summarizing now would leave
        # that batch out for good, and a replay superseding it would be refused as a forgery; the keys stay
        return 0
    prefix = f"batch.{check_token(state.pipeline)}.{check_token(state.run_id)}."
    ledgers = {prefix + _suffix(state, batch_id): b for batch_id, b in state.batches.items()}
    parts = _summary_parts(ledgers)
    for i, data in enumerate(parts):
        await _put(kv, summary_key(state.pipeline, state.run_id, i), data, ttl)
    key = run_key(state.pipeline, state.run_id)

    async def mark() -> bool:
        value, revision = await _read(kv, key)
        if not value or revision is None:
            return False
        current = RunState.model_validate_json(value)
        if current.summary or current.status not in ("completed", "failed"):
            return False
        if any(ledgers.get(k) != b for k, b in current.pending.items()):
            return False  # a batch folded since it was read: its next fold summarizes it
        current.summary, current.pending = len(parts), {}
        await _write(kv, key, current.model_dump_json().encode(), revision, ttl)
        return True

    if not await compare_and_set(mark, key):
        return 0
    await asyncio.gather(*(kv.purge(k, msg_ttl=PURGED_MARKER_TTL_S) for k in ledgers))
    return len(ledgers)


async def _put(kv: KeyValue, key: str, data: bytes, ttl: float | None) -> int:
    """Write a key whatever it holds (with a per-key TTL when given)."""

    async def attempt() -> int:
        _, revision = await _read(kv, key)
        return await _write(kv, key, data, revision, ttl)

    return await compare_and_set(attempt, key)


def _suffix(state: RunState, batch_id: str) -> str:
    """The batch-key suffix of a batch id of `state`'s run (`batch_key` without its prefix)."""
    return batch_key(state.pipeline, state.run_id, batch_id).split(".", 3)[3]


_UNKNOWN = -1
"""A revision not read yet."""


async def put_batch(
    kv: KeyValue, key: str, batch: BatchState, ttl: float | None = RUN_TTL_S, revision: int | None = _UNKNOWN
) -> int | None:
    """Write a batch's ledger unless its key holds the same or a newer version (two replicas may race); returns the
    key's new revision (None: not written).

    `revision`: the key's revision as the caller read it (None: missing), which saves reading it again when no one
    wrote it since.
    """
    known = [revision]

    async def attempt() -> int | None:
        rev = known[0]
        known[0] = _UNKNOWN  # a retry reads again
        if rev == _UNKNOWN:
            value, rev = await _read(kv, key)
            if value and BatchState.model_validate_json(value).v >= batch.v:
                return None
        return await _write(kv, key, batch.model_dump_json().encode(), rev, ttl)

    return await compare_and_set(attempt, key)


SEEN_MAX = 200_000
"""Batch keys a tracker remembers having seen per run; past it, a batch key not remembered is read again."""


@dataclass
class _Known:
    revision: int
    ledgers: dict[str, tuple[BatchState, int]]
    seen: set[str] | None
    """Every batch key of the run that exists (when this tracker has folded the run from its first event): a batch key
    not among them does not exist, and needs no read. None: not known."""


class Ledgers:
    """Batch ledgers as this process last read or wrote them (with their keys' revisions), per run, so that a tracker
    folding a run's events reads each batch key once rather than once per event, and a new batch's key not at all
    when it has folded the run since its first event.

    A run's ledgers are trusted only while its run key is at the revision this process last wrote: every writer of a
    batch key writes the run key around it (`pending`), so any other writer (a second replica, a rebuild) shows as a
    newer run revision, and the run's ledgers are read again. Settled batches' ledgers are dropped (few get another
    event; their keys stay in `seen`), and past `runs` runs the least recently used goes.
    """

    def __init__(self, runs: int = 256) -> None:
        self._runs: OrderedDict[str, _Known] = OrderedDict()
        self._max = runs

    def of(self, key: str, revision: int | None) -> tuple[dict[str, tuple[BatchState, int]], set[str] | None]:
        """The ledgers known of run `key` as of its run-key `revision`, and the batch keys known to exist (None: not
        known); nothing is known when another writer came between."""
        kept = self._runs.get(key)
        if kept is None or kept.revision != revision:
            return {}, None
        self._runs.move_to_end(key)
        return kept.ledgers, kept.seen

    def keep(self, key: str, revision: int, ledgers: dict[str, tuple[BatchState, int]], seen: set[str] | None) -> None:
        """Remember run `key`'s unsettled ledgers as of its run-key `revision` (this process's write)."""
        if seen is not None:
            seen.update(ledgers)
            if len(seen) > SEEN_MAX:
                seen = None
        pending = {k: v for k, v in ledgers.items() if v[0].outcome == "pending"}
        self._runs[key] = _Known(revision, pending, seen)
        self._runs.move_to_end(key)
        while len(self._runs) > self._max:
            self._runs.popitem(last=False)

    def forget(self, key: str) -> None:
        """Drop a run's ledgers (it finished)."""
        self._runs.pop(key, None)


async def apply(kv: KeyValue, ev: Event, *, ttl: float | None = RUN_TTL_S) -> RunState:
    """Fold one event into its run's state (`apply_many` with one event)."""
    if not is_run_event(ev):  # an operator action names no run: folded into a throwaway state, nothing written
        return fold(None, ev)
    return await apply_many(kv, [ev], ttl=ttl)


async def apply_many(
    kv: KeyValue,
    events: Sequence[Event],
    *,
    ttl: float | None = RUN_TTL_S,
    ledgers: Ledgers | None = None,
    defer: int = 0,
) -> RunState:
    """Fold events of one run, in order, into its state with compare-and-set (retried on a concurrent write): one
    run-key write for all of them, however many.

    A batch event changes two keys: its batch's ledger and the run's totals. The run key is written first, with the
    batches' new ledgers in `pending`, then the batch keys (side by side), then `pending` is cleared; a delivery that
    stopped between the writes leaves the batches in `pending`, and their redelivery (or a batch's next event)
    finishes the writes without counting again. A redelivered event changes nothing, so it writes nothing. However
    many events, the run key (constant size, whatever the number of batches) is written at most twice and each batch
    key once. `ledgers`: the batch ledgers this process knows already (`Ledgers`), which saves reading their keys.

    `defer`: how many unsettled batches may stay in the run key's `pending` without their own key being written (the
    tracker's 256): a batch key is then written once, when its batch settles, instead of at each of its events, and a
    fetch whose batches all stay pending writes the run key once. `load_batches` and `get_batch` read `pending` first.
    """
    first = events[0]
    key = run_key(first.pipeline, first.run_id)
    cache = ledgers or Ledgers()
    bkeys = {e.batch_id: batch_key(e.pipeline, e.run_id, e.batch_id) for e in events if isinstance(e, BATCH_EVENTS)}
    run_level = any(not isinstance(e, BATCH_EVENTS) for e in events)

    seen: list[set[str] | None] = [None]

    async def count() -> tuple[RunState, int | None, dict[str, tuple[BatchState | None, int | None]], set[str]]:
        value, revision = await _read(kv, key)
        state = RunState.model_validate_json(value) if value else None
        kept, exist = cache.of(key, revision)
        known: dict[str, tuple[BatchState | None, int | None]] = dict(kept)
        if state is None and not kept:
            exist = set()  # a run no one has folded: none of its batch keys exists yet
        seen[0] = set(exist) if exist is not None else None
        missing = [b for b in bkeys.values() if b not in known and (state is None or b not in state.pending)]
        absent = [b for b in missing if exist is not None and b not in exist]
        missing = [b for b in missing if exist is None or b in exist]
        for b in absent:
            known[b] = (None, None)
        for b, (bvalue, brev) in zip(missing, await asyncio.gather(*(_read(kv, b) for b in missing)), strict=True):
            known[b] = (BatchState.model_validate_json(bvalue) if bvalue else None, brev)
        if state is not None and state.summary and any(known[b][0] is None for b in missing):
            summarized = await read_summary(kv, state)  # a late event of a finished run: its ledger is here
            for b in missing:
                if known[b][0] is None and b in summarized:
                    known[b] = (summarized[b], known[b][1])
        working: dict[str, BatchState | None] = {
            b: state.pending[b] if state is not None and b in state.pending else known[b][0] for b in bkeys.values()
        }
        changed: set[str] = set()
        for ev in events:
            if not isinstance(ev, BATCH_EVENTS):
                state = fold_run(state, ev)
                continue
            b = bkeys[ev.batch_id]
            old = working[b]
            new = fold_batch(old, ev)
            if old is not None and new.v == old.v:  # seen before: nothing to count
                continue
            state = fold_run(state, ev)
            state.tally.add(old, new)
            working[b] = new
            state.pending[b] = new
            changed.add(b)
        if state is None:  # only events seen before, of a run whose state has gone: nothing to write
            return fold_run(None, first), None, known, set()
        half_done = {b for b in bkeys.values() if b in state.pending} - changed  # a write left half done before
        flush = {b for b in changed if state.pending[b].outcome != "pending"} | half_done
        held = sorted(b for b in state.pending if b not in flush)
        flush.update(held[defer:])  # room for `defer` unsettled batches in the run key (the oldest): the rest now
        if not changed and not run_level:
            return state, revision, known, flush
        return state, await _write(kv, key, state.model_dump_json().encode(), revision, ttl), known, flush

    state, revision, known, to_write = await compare_and_set(count, key)
    if revision is None:
        return state
    if to_write:
        state, revision = await _settle_pending(kv, key, state, revision, known, to_write, ttl, cache, seen[0])
    else:
        cache.keep(key, revision, _kept(known), seen[0])
    return state


def _kept(known: dict[str, tuple[BatchState | None, int | None]]) -> dict[str, tuple[BatchState, int]]:
    """The ledgers of `known` that exist, with their revisions."""
    return {b: (v, rev) for b, (v, rev) in known.items() if v is not None and rev is not None}


async def _settle_pending(
    kv: KeyValue,
    key: str,
    state: RunState,
    revision: int,
    known: dict[str, tuple[BatchState | None, int | None]],
    bkeys: set[str],
    ttl: float | None,
    cache: Ledgers,
    seen: set[str] | None,
) -> tuple[RunState, int]:
    """Write counted batches' ledgers (`state.pending[b]` for each of `bkeys`, `state` as of run-key `revision`) to
    their keys, then drop them from the run's `pending`, unless a later event of the same batch has replaced one there
    meanwhile (that event's delivery writes it)."""
    written = {b: state.pending[b] for b in bkeys}
    order = sorted(written)
    revs = await asyncio.gather(
        *(put_batch(kv, b, written[b], ttl, known[b][1] if b in known else _UNKNOWN) for b in order)
    )
    current: list[Any] = [state, revision]

    async def clear() -> tuple[RunState, int]:
        st, rev = current[0], current[1]
        if st is None:
            value, rev = await _read(kv, key)
            if not value or rev is None:
                raise Contention(f"{key} vanished while its batches were written")
            st = RunState.model_validate_json(value)
        current[0] = None  # a retry reads again
        mine = [b for b in order if st.pending.get(b) == written[b]]
        if not mine:
            return st, rev
        for b in mine:
            del st.pending[b]
        return st, await _write(kv, key, st.model_dump_json().encode(), rev, ttl)

    state, revision = await compare_and_set(clear, key)
    ledgers = _kept(known)
    for b, rev in zip(order, revs, strict=True):
        if rev is not None:
            ledgers[b] = (written[b], rev)
        else:
            ledgers.pop(b, None)  # someone wrote a newer one: read it next time
    cache.keep(key, revision, ledgers, None if seen is None else seen | set(order))
    return state, revision


async def load_batches(kv: KeyValue, state: RunState) -> RunState:
    """Read a run's batch ledgers from their keys into `state.batches` (for what needs them one by one: replay
    supersession, dead-letter status). Linear in the run's batches; the totals never need it."""
    prefix = f"batch.{check_token(state.pipeline)}.{check_token(state.run_id)}."
    for k, b in (await read_summary(kv, state)).items():  # a finished run's, then any key written since
        state.batches[_batch_id(state, k)] = b
    for k in await bucket_keys(kv, f"{prefix}>"):
        value, _ = await _read(kv, k)
        if value:
            b = BatchState.model_validate_json(value)
            state.batches[_batch_id(state, k)] = b
    for k, b in state.pending.items():  # counted, not written yet: the newer of the two
        state.batches[_batch_id(state, k)] = b
    return state


async def get_cursor(kv: KeyValue, pipeline: str) -> dict[str, Any] | None:
    """The cursor the latest completed run (or an operator, `jetl cursor`) left; None when there is none."""
    try:
        entry = await kv.get(cursor_key(pipeline))
    except (KeyNotFoundError, KeyDeletedError, NotFoundError):
        return None
    value: dict[str, Any] | None = orjson.loads(entry.value) if entry.value else None
    return value


async def put_cursor(kv: KeyValue, pipeline: str, cursor: dict[str, Any] | None) -> None:
    """Advance a pipeline's cursor (only ever called for a completed run)."""
    if cursor is not None:
        await kv.put(cursor_key(pipeline), orjson.dumps(cursor))


async def delete_cursor(kv: KeyValue, pipeline: str) -> None:
    """Forget a pipeline's cursor (`jetl cursor reset`): its next run starts from the beginning."""
    await kv.delete(cursor_key(pipeline))  # a delete marker: deleting a missing key is fine


def slot_key(pipeline: str) -> str:
    """KV key of the end of the last schedule slot requested for a pipeline."""
    return f"{StateKey.SCHED}.{check_token(pipeline)}"


def pause_key(pipeline: str) -> str:
    """KV key set by `jetl pause` / `jetl resume`."""
    return f"{StateKey.PAUSE}.{check_token(pipeline)}"


def active_key(pipeline: str) -> str:
    """KV key of a pipeline's unfinished runs (one key, so counting them is one read)."""
    return f"{StateKey.ACTIVE}.{check_token(pipeline)}"


def last_ok_key(pipeline: str) -> str:
    """KV key of a pipeline's latest completed run."""
    return f"{StateKey.OK}.{check_token(pipeline)}"


def last_failed_key(pipeline: str) -> str:
    """KV key of a pipeline's latest failed run."""
    return f"{StateKey.FAILED}.{check_token(pipeline)}"


HEARTBEAT_PREFIX = StateKey.SVC.value


def heartbeat_key(service: str, instance: str) -> str:
    """KV key of one service instance's heartbeat (the instance name made a key token)."""
    token = "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)
    return f"{HEARTBEAT_PREFIX}.{check_token(service)}.{token}"


async def put_expiring(kv: KeyValue, key: str, value: bytes, ttl: float) -> None:
    """Put a key that expires `ttl` seconds after this write (`Nats-TTL`; nats-py's `put` takes no TTL)."""
    # the same publish `kv.put` makes, to the key's subject on the bucket's stream, with the TTL header added
    await kv._js.publish(f"{kv._pre}{key}", value, msg_ttl=ttl)


class RunMark(BaseModel):
    """The latest completed (or failed) run of a pipeline, as `jetl health` judges freshness by it."""

    run_id: str
    at: datetime
    """When the run finished."""
    trigger: str = ""
    data_interval_end: datetime | None = None
    error: str | None = None


async def get_json(kv: KeyValue, key: str) -> Any:
    """A key's JSON value, or None when it is missing or deleted."""
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, NotFoundError):
        return None
    return orjson.loads(entry.value) if entry.value else None


async def update_json(kv: KeyValue, key: str, change: Callable[[Any], Any]) -> Any:
    """Read-modify-write one JSON key with compare-and-set; `change(old)` returns the new value (None: leave it)."""

    async def attempt() -> Any:
        value, revision = await _read(kv, key)
        old = orjson.loads(value) if value else None
        new = change(old)
        if new is None or new == old:
            return old
        if revision is None:
            await kv.create(key, orjson.dumps(new))
        else:
            await kv.update(key, orjson.dumps(new), last=revision)
        return new

    return await compare_and_set(attempt, key)


async def get_paused(kv: KeyValue, pipeline: str) -> bool | None:
    """The pause flag `jetl pause`/`jetl resume` left, or None when the code's setting stands."""
    value = await get_json(kv, pause_key(pipeline))
    return None if value is None else bool(value)


async def set_paused(kv: KeyValue, pipeline: str, paused: bool) -> None:
    """Pause or resume a pipeline's schedule (overrides `Cron(paused=...)`)."""
    await kv.put(pause_key(pipeline), orjson.dumps(paused))


async def active_runs(kv: KeyValue, pipeline: str) -> dict[str, str]:
    """{run_id: requested_at} of a pipeline's runs that have not finished (as far as the index knows)."""
    value = await get_json(kv, active_key(pipeline))
    return dict(value) if isinstance(value, dict) else {}


UNSTARTED_AFTER = timedelta(hours=1)
"""An indexed run with no state this long after its request never reached the tracker: stop counting it active."""


async def unfinished_runs(
    kv: KeyValue, pipeline: str, now: datetime
) -> tuple[dict[str, tuple[datetime, RunState | None]], list[str]]:
    """({run_id: (requested_at, its state if the tracker has folded any)} of a pipeline's runs that have not
    finished, the runs the unfinished index still lists that have finished or were lost before they started)."""
    active = await active_runs(kv, pipeline)
    running: dict[str, tuple[datetime, RunState | None]] = {}
    gone: list[str] = []
    for run_id, requested in active.items():
        at = datetime.fromisoformat(requested)
        state = await get_run(kv, pipeline, run_id)
        done = state.status in ("completed", "failed") if state is not None else False
        lost = state is None and now - at > UNSTARTED_AFTER
        if done or lost:
            gone.append(run_id)
        else:
            running[run_id] = (at, state)
    return running, gone


async def add_active(kv: KeyValue, pipeline: str, run_id: str, requested_at: datetime) -> None:
    """Index a run as unfinished."""

    def change(old: Any) -> Any:
        cur = dict(old or {})
        if run_id in cur:
            return None
        cur[run_id] = requested_at.isoformat()
        return cur

    await update_json(kv, active_key(pipeline), change)


async def remove_active(kv: KeyValue, pipeline: str, run_ids: Iterable[str]) -> None:
    """Drop finished runs from the unfinished index."""
    gone = set(run_ids)

    def change(old: Any) -> Any:
        cur = dict(old or {})
        if not gone & set(cur):
            return None
        return {k: v for k, v in cur.items() if k not in gone}

    await update_json(kv, active_key(pipeline), change)


async def mark_finished(kv: KeyValue, state: RunState) -> None:
    """Record a finished run: `ok.`/`failed.` keep the latest one (never move backwards), `active.` forgets it."""
    if state.status not in ("completed", "failed"):
        return
    mark = RunMark(
        run_id=state.run_id,
        at=state.finished_at or datetime.now(UTC),
        trigger=state.trigger,
        data_interval_end=state.data_interval_end,
        error=state.error,
    )
    key = last_ok_key(state.pipeline) if state.status == "completed" else last_failed_key(state.pipeline)

    def newer(old: Any) -> Any:
        if old is not None and RunMark.model_validate(old).at >= mark.at:
            return None
        return mark.model_dump(mode="json")

    await update_json(kv, key, newer)
    await remove_active(kv, state.pipeline, [state.run_id])


async def get_mark(kv: KeyValue, key: str) -> RunMark | None:
    """A RunMark key (`ok.<pipeline>` or `failed.<pipeline>`), or None."""
    value = await get_json(kv, key)
    return RunMark.model_validate(value) if value else None


async def watch_values(kv: KeyValue, keys: str) -> dict[str, bytes]:
    """The current values of every key matching a filter (`svc.>`)."""
    out: dict[str, bytes] = {}
    for key in await bucket_keys(kv, keys):
        value, _ = await _read(kv, key)
        if value:
            out[key] = value
    return out


async def list_runs(kv: KeyValue, pipeline: str | None = None) -> list[RunState]:
    """Every run state kept, newest first, with the batch ledgers of replays and of the runs they replay."""
    out = await run_states(kv, pipeline)
    # replay supersession is per batch (`expected_rows`, `dead_letter_status`): read the ledgers of replays and of
    # the runs they replay, and of no other run
    by_id = {r.run_id: r for r in out}
    for r in out:
        if r.trigger == "replay" and r.parent_run_id and not r.shadow:
            for one in (r, by_id.get(r.parent_run_id)):
                if one is not None and not one.batches:
                    await load_batches(kv, one)
    return out
