"""The state bucket's plain reads: the bucket itself, its keys, one key's value, and the run states in it.

`jetl.state` writes the bucket and folds events into it on top of these; they are kept apart from it so that a reader
of run states (`jetl status`) imports neither the event models nor the fold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetl.errors import NoDeployment
from jetl.runsummary import RunSummary, decode_run
from jetl.subjects import StateKey, check_token
from jetl.topology import BUCKET, server_url

if TYPE_CHECKING:
    from jetl.runstate import RunState

R = TypeVar("R", "RunState", "RunState | RunSummary")

READS_IN_FLIGHT = 64
"""Keys read at once by `run_states` (one request each)."""


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


async def read_key(kv: KeyValue, key: str) -> tuple[bytes | None, int | None]:
    """(value, revision) of a key, (None, None) when it is missing."""
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError, NotFoundError):
        return None, None
    return entry.value, entry.revision


async def get_run(kv: KeyValue, pipeline: str, run_id: str) -> RunState | None:
    """A run's folded state, or None."""
    from jetl.runstate import RunState

    try:
        entry = await kv.get(run_key(pipeline, run_id))
    except (KeyNotFoundError, NotFoundError):
        return None
    return RunState.model_validate_json(entry.value) if entry.value else None


async def bucket_keys(kv: KeyValue, keys: str = ">") -> list[str]:
    """Every key in the bucket that matches `keys` (deleted keys may be among them: read them with `read_key`).

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


async def run_states(kv: KeyValue, pipeline: str | None = None) -> list[RunState]:
    """Every run state kept (of one pipeline, or all), newest first, as the tracker folded them: totals only, no
    batch ledgers (`jetl.state.list_runs` loads those a replay needs)."""
    from jetl.runstate import RunState

    return await _runs(kv, pipeline, RunState.model_validate_json)


def _summary(value: bytes) -> RunState | RunSummary:
    """A value as `decode_run` reads it, else as `RunState` validates it (pydantic imported only then)."""
    summary = decode_run(value)
    if summary is not None:
        return summary
    from jetl.runstate import RunState

    return RunState.model_validate_json(value)


async def run_summaries(kv: KeyValue, pipeline: str | None = None) -> list[RunState | RunSummary]:
    """`run_states`, each as `jetl status` shows it (`jetl.runsummary`): decoded without pydantic where the value
    is surely what `RunState` writes, validated by `RunState` otherwise."""
    return await _runs(kv, pipeline, _summary)


async def _runs(kv: KeyValue, pipeline: str | None, decode: Callable[[bytes], R]) -> list[R]:
    keys = [k for k in await bucket_keys(kv) if k.startswith(f"run.{pipeline}." if pipeline else "run.")]
    values: list[bytes | None] = []
    for i in range(0, len(keys), READS_IN_FLIGHT):  # in flight together, a bounded number at a time
        read = await asyncio.gather(*(read_key(kv, k) for k in keys[i : i + READS_IN_FLIGHT]))
        values += [value for value, _ in read]
    out = [decode(value) for value in values if value]

    def when(st: R) -> float:
        moment = st.requested_at or st.started_at or st.finished_at
        return moment.timestamp() if moment else 0.0

    out.sort(key=when, reverse=True)
    return out
