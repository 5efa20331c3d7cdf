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

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel

from jetl.errors import NoDeployment
from jetl.events import Event, is_run_event
from jetl.projection import BATCH_EVENTS, BatchState, RunState, fold, fold_batch, fold_run
from jetl.settings import NatsSettings
from jetl.subjects import StateKey, check_token
from jetl.topology import BUCKET, server_url

RUN_TTL_S = NatsSettings().run_state_ttl_days * 86400
"""Seconds a run or batch key lives after its last write."""


async def bucket(nc: Client) -> KeyValue:
    """The state bucket; NoDeployment when the server has none (only `jetl deploy` / `jetl up` create it)."""
    js = nc.jetstream()
    try:
        return await js.key_value(BUCKET)
    except (BucketNotFoundError, NotFoundError) as exc:
        raise NoDeployment(server_url(nc)) from exc


def run_key(pipeline: str, run_id: str) -> str:
    """KV key of a run's state."""
    return f"{StateKey.RUN}.{check_token(pipeline)}.{check_token(run_id)}"


def cursor_key(pipeline: str) -> str:
    """KV key of a pipeline's incremental cursor."""
    return f"{StateKey.CURSOR}.{check_token(pipeline)}"


async def get_run(kv: KeyValue, pipeline: str, run_id: str) -> RunState | None:
    """A run's folded state, or None."""
    try:
        entry = await kv.get(run_key(pipeline, run_id))
    except (KeyNotFoundError, NotFoundError):
        return None
    return RunState.model_validate_json(entry.value) if entry.value else None


def batch_key(pipeline: str, run_id: str, batch_id: str) -> str:
    """KV key of one batch's ledger: `batch.<pipeline>.<run>.<seq>` (from batch id `<run>/<seq>`, each `/` a `.`)."""
    rest = batch_id.removeprefix(f"{run_id}/")
    return f"{StateKey.BATCH}.{check_token(pipeline)}.{check_token(run_id)}.{rest.replace('/', '.')}"


def _batch_id(state: RunState, key: str) -> str:
    """The batch id a batch key of `state`'s run stands for (`batch_key` backwards)."""
    return f"{state.run_id}/{key.split('.', 3)[3].replace('.', '/')}"


def _conflict(exc: Exception) -> bool:
    """A compare-and-set lost to a concurrent writer."""
    return isinstance(exc, KeyWrongLastSequenceError) or "wrong last sequence" in str(exc)


async def _read(kv: KeyValue, key: str) -> tuple[bytes | None, int | None]:
    """(value, revision) of a key, (None, None) when it is missing."""
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError, NotFoundError):
        return None, None
    return entry.value, entry.revision


async def _write(kv: KeyValue, key: str, data: bytes, revision: int | None, ttl: float | None) -> int:
    """Create (revision None) or compare-and-set a key, with a per-key TTL when given; returns the new revision."""
    if revision is None:
        return await kv.create(key, data, msg_ttl=ttl)
    return await kv.update(key, data, last=revision, msg_ttl=ttl)


async def get_batch(kv: KeyValue, pipeline: str, run_id: str, batch_id: str) -> BatchState | None:
    """One batch's ledger as its own key holds it, or None."""
    value, _ = await _read(kv, batch_key(pipeline, run_id, batch_id))
    return BatchState.model_validate_json(value) if value else None


_UNKNOWN = -1
"""A revision not read yet."""


async def put_batch(
    kv: KeyValue, key: str, batch: BatchState, ttl: float | None = RUN_TTL_S, revision: int | None = _UNKNOWN
) -> None:
    """Write a batch's ledger unless its key holds the same or a newer version (two replicas may race).

    `revision`: the key's revision as the caller read it (None: missing), which saves reading it again when no one
    wrote it since.
    """
    for _ in range(50):
        if revision == _UNKNOWN:
            value, revision = await _read(kv, key)
            if value and BatchState.model_validate_json(value).v >= batch.v:
                return
        try:
            await _write(kv, key, batch.model_dump_json().encode(), revision, ttl)
            return
        except Exception as exc:
            if not _conflict(exc):
                raise
            revision = _UNKNOWN
    raise RuntimeError(f"could not update {key}: too many concurrent writers")


async def apply(kv: KeyValue, ev: Event, *, ttl: float | None = RUN_TTL_S) -> RunState:
    """Fold one event into its run's state with compare-and-set (retried on a concurrent write).

    A batch event changes two keys: its batch's ledger and the run's totals. The run key is written first, with the
    batch's new ledger in `pending`, then the batch key, then `pending` is cleared; a delivery that stopped between
    the writes leaves the batch in `pending`, and its redelivery (or the batch's next event) finishes the write
    without counting again. A redelivered event changes nothing, so it writes nothing. Each event writes the run
    key (constant size, whatever the number of batches) at most twice and its batch key once.
    """
    if not is_run_event(ev):  # an operator action names no run: folded into a throwaway state, nothing written
        return fold(None, ev)
    key = run_key(ev.pipeline, ev.run_id)
    if not isinstance(ev, BATCH_EVENTS):
        for _ in range(50):
            value, revision = await _read(kv, key)
            folded = fold_run(RunState.model_validate_json(value) if value else None, ev)
            try:
                await _write(kv, key, folded.model_dump_json().encode(), revision, ttl)
                return folded
            except Exception as exc:
                if not _conflict(exc):
                    raise
        raise RuntimeError(f"could not update {key}: too many concurrent writers")
    bkey = batch_key(ev.pipeline, ev.run_id, ev.batch_id)
    for _ in range(50):
        value, revision = await _read(kv, key)
        state = RunState.model_validate_json(value) if value else None
        old = state.pending.get(bkey) if state is not None else None
        brev: int | None = _UNKNOWN  # the batch key's revision is read only when its value is
        if old is None:
            bvalue, brev = await _read(kv, bkey)
            old = BatchState.model_validate_json(bvalue) if bvalue else None
        new = fold_batch(old, ev)
        if old is not None and new.v == old.v:  # seen before: nothing to count
            if state is not None and bkey in state.pending:  # ...but its write was left half done
                assert revision is not None
                return await _settle_pending(kv, key, bkey, state, revision, brev, ttl)
            return state if state is not None else fold_run(None, ev)
        state = fold_run(state, ev)
        state.tally.add(old, new)
        state.pending[bkey] = new
        try:
            revision = await _write(kv, key, state.model_dump_json().encode(), revision, ttl)
        except Exception as exc:
            if not _conflict(exc):
                raise
            continue
        return await _settle_pending(kv, key, bkey, state, revision, brev, ttl)
    raise RuntimeError(f"could not update {key}: too many concurrent writers")


async def _settle_pending(
    kv: KeyValue, key: str, bkey: str, state: RunState, revision: int, brev: int | None, ttl: float | None
) -> RunState:
    """Write a counted batch's ledger (`state.pending[bkey]`, `state` as of run-key `revision`) to its key, then drop
    it from the run's `pending`, unless a later event of the same batch has replaced it there meanwhile (that
    event's delivery writes it)."""
    batch = state.pending[bkey]
    await put_batch(kv, bkey, batch, ttl, brev)
    for _ in range(50):
        if state.pending.get(bkey) != batch:
            return state
        del state.pending[bkey]
        try:
            await _write(kv, key, state.model_dump_json().encode(), revision, ttl)
            return state
        except Exception as exc:
            if not _conflict(exc):
                raise
        value, rev = await _read(kv, key)
        if not value or rev is None:
            raise RuntimeError(f"{key} vanished while its batch {bkey} was written")
        state, revision = RunState.model_validate_json(value), rev
    raise RuntimeError(f"could not update {key}: too many concurrent writers")


async def load_batches(kv: KeyValue, state: RunState) -> RunState:
    """Read a run's batch ledgers from their keys into `state.batches` (for what needs them one by one: replay
    supersession, dead-letter status). Linear in the run's batches; the totals never need it."""
    prefix = f"batch.{check_token(state.pipeline)}.{check_token(state.run_id)}."
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
    for _ in range(50):
        try:
            entry = await kv.get(key)
            old, revision = (orjson.loads(entry.value) if entry.value else None), entry.revision
        except (KeyNotFoundError, NotFoundError):
            old, revision = None, None
        new = change(old)
        if new is None or new == old:
            return old
        try:
            if revision is None:
                await kv.create(key, orjson.dumps(new))
            else:
                await kv.update(key, orjson.dumps(new), last=revision)
            return new
        except Exception as exc:
            if not isinstance(exc, KeyWrongLastSequenceError) and "wrong last sequence" not in str(exc):
                raise
    raise RuntimeError(f"could not update {key}: too many concurrent writers")


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
    """Every run state kept, newest first."""
    keys = await bucket_keys(kv)
    prefix = f"run.{pipeline}." if pipeline else "run."
    out: list[RunState] = []
    for k in keys:
        if k.startswith(prefix):
            value, _ = await _read(kv, k)
            if value:
                out.append(RunState.model_validate_json(value))

    def when(st: RunState) -> float:
        moment = st.requested_at or st.started_at or st.finished_at
        return moment.timestamp() if moment else 0.0

    out.sort(key=when, reverse=True)
    # replay supersession is per batch (`expected_rows`, `dead_letter_status`): read the ledgers of replays and of
    # the runs they replay, and of no other run
    by_id = {r.run_id: r for r in out}
    for r in out:
        if r.trigger == "replay" and r.parent_run_id and not r.shadow:
            for one in (r, by_id.get(r.parent_run_id)):
                if one is not None and not one.batches:
                    await load_batches(kv, one)
    return out


async def bucket_keys(kv: KeyValue, keys: str = ">") -> list[str]:
    """Every key in the bucket that matches `keys` (deleted keys may be among them: read them with `_read`).

    Read from the bucket stream's subject counts in one request, not with nats-py's `kv.keys()`: its watcher can
    report "no keys" when the server delivers the entries before the consumer info it compares them with (seen
    under load as `jetl counts` finding no runs beside a full bucket).
    """
    # nats-py keeps the bucket's stream and subject prefix on the KeyValue object and offers no public accessor
    js, stream, prefix = kv._js, kv._stream, kv._pre
    try:
        info = await js.stream_info(stream, subjects_filter=f"{prefix}{keys}")
    except NotFoundError:
        return []
    return sorted(subject[len(prefix) :] for subject in info.state.subjects or {})
