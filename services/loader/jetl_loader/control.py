"""The loader's request/reply verbs: questions only the loader can answer, because only it holds the destination
(a chdb folder opens in one process at a time).

- `jetl.ctl.loader.count` {"pipeline"} -> {"destination", "total", "by_run", "exact", "key", "keys"}
- `jetl.ctl.loader.max` {"pipeline", "column", "tie_breaker"} -> {"position"}: the last row's [value, key] in that
  order, or None (seeds a cursor)
- `jetl.ctl.loader.diff` {"pipeline", "run_id", "parent_run_id", "drop", "sample"} -> a `Diff` as a dict
- `jetl.ctl.loader.query` {"pipeline", "sql", "max_rows", "seconds", "current"} -> {"destination", "columns",
  "rows", "truncated"}: one read-only SELECT, at most `max_rows` rows and `seconds` of work; with `current` (the
  default) the table's name in it reads the current rows (per key the highest version, deletes applied, ...)
- `jetl.ctl.loader.rows` {"pipeline", "limit"} -> the same answer: the newest few current rows (the dashboard)

Every reply is `{"ok": true, "result": ...}` or `{"ok": false, "error", "disposition"}` (transient or terminal,
classified by jetl.errors), so the CLI can tell "try again" from "this cannot work". Replicas answer in one queue
group: one answer per request.

Requests come over the bus, so each is read by its model (a body over `MAX_BODY` bytes is not read at all) and acts
only on what the loader owns: a diff, which drops a shadow, names a replay run the run state knows, loading into a
shadow (`replay --diff`), and that replay's own parent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from faststream.nats import NatsRouter
from faststream.nats.annotations import NatsMessage
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jetl import subjects
from jetl.errors import ConfigError, TerminalError, TransientError, classify
from jetl.loaders.versions import run_view
from jetl.logging import get_logger
from jetl.messages.ids import Token
from jetl.protocols import (
    VERSION,
    CountingLoader,
    KeyedLoader,
    LineageLoader,
    MergingLoader,
    QueryableLoader,
    RunView,
    VersionedLoader,
)
from jetl.registry import get_pipeline
from jetl.runtime.service import ServiceContext
from jetl.state import get_run, list_runs
from jetl_loader.lineage import lineage

log = get_logger("jetl.loader")

M = TypeVar("M", bound=BaseModel)
MAX_BODY = 16 * 1024
"""Bytes a control request may have: the verbs take a few names and numbers, so anything larger is not read."""


class CountRequest(BaseModel):
    """`count`: the rows of one pipeline's destination."""

    model_config = ConfigDict(extra="forbid")
    pipeline: Token
    """The pipeline whose destination is counted."""


class MaxRequest(BaseModel):
    """`max`: the last row of a pipeline's destination in (column, tie breaker) order."""

    model_config = ConfigDict(extra="forbid")
    pipeline: Token
    """The pipeline whose destination is read."""
    column: str = Field(max_length=256)
    """The cursor column (checked against the pipeline's schema)."""
    tie_breaker: str | None = Field(default=None, max_length=256)
    """The column that orders rows of one value (checked against the schema)."""


class DiffRequest(BaseModel):
    """`diff`: a replay's shadow against its parent run's rows."""

    model_config = ConfigDict(extra="forbid")
    pipeline: Token
    """The pipeline of both runs."""
    run_id: Token
    """The replay run that loaded into the shadow."""
    parent_run_id: Token
    """The run it replayed."""
    drop: bool = True
    """Drop the shadow afterwards."""
    sample: int = Field(default=10, ge=0, le=1000)
    """Sample rows (or keys) shown per kind of difference."""


class QueryRequest(BaseModel):
    """`query`: one read-only SELECT over a pipeline's destination."""

    model_config = ConfigDict(extra="forbid")
    pipeline: Token
    """The pipeline whose destination is read."""
    sql: str = Field(max_length=8000)
    """One SELECT (or WITH ... SELECT); the destination table's name reads its current rows."""
    max_rows: int = Field(default=100, ge=1, le=10_000)
    """Rows returned at most (the answer says when there were more)."""
    seconds: float = Field(default=10.0, gt=0, le=60)
    """Work the destination may spend on it."""
    current: bool = True
    """Read the current rows (False: every stored row, older versions and delete markers included)."""


class RowsRequest(BaseModel):
    """`rows`: the newest few current rows of a pipeline's destination."""

    model_config = ConfigDict(extra="forbid")
    pipeline: Token
    """The pipeline whose destination is read."""
    limit: int = Field(default=10, ge=1, le=1000)
    """How many rows."""


def query(pipeline_name: str, sql: str, runs: RunView, max_rows: int, seconds: float, current: bool) -> dict[str, Any]:
    """One read-only SELECT over the pipeline's destination (only ClickHouse answers SQL)."""
    p = get_pipeline(pipeline_name)
    if not isinstance(p.loader, QueryableLoader):
        raise ConfigError(f"pipeline {pipeline_name!r}: {p.loader!r} does not answer SQL (see `jetl counts`)")
    columns, rows, truncated = p.loader.query(sql, runs=runs, current=current, max_rows=max_rows, seconds=seconds)
    return {"destination": p.loader.describe(), "columns": columns, "rows": rows, "truncated": truncated}


def recent_rows(pipeline_name: str, runs: RunView, limit: int) -> dict[str, Any]:
    """The newest `limit` current rows (by version), for the dashboard's pipeline page."""
    p = get_pipeline(pipeline_name)
    if not isinstance(p.loader, VersionedLoader):
        raise ConfigError(f"pipeline {pipeline_name!r}: {p.loader!r} cannot read its rows back")
    found = p.loader.current_rows(pipeline_name, runs, limit)
    found.sort(key=lambda r: int(r.get(VERSION) or 0), reverse=True)  # newest first
    columns = list(dict.fromkeys(k for r in found for k in r))
    return {
        "destination": p.loader.describe(),
        "columns": columns,
        "rows": [[r.get(c) for c in columns] for r in found],
        "truncated": False,
    }


def count(pipeline_name: str, runs: RunView | None = None) -> dict[str, Any]:
    """Rows in a pipeline's destination, per run when the loader keeps lineage (None where it cannot count), and its
    distinct primary keys when the pipeline declares one."""
    p = get_pipeline(pipeline_name)
    loader = p.loader
    merges = isinstance(loader, MergingLoader) and loader.mode == "merge"
    exact = not merges and not p.primary_key  # a key's older rows merge away
    keyed: dict[str, Any] = {"key": list(p.primary_key), "keys": None}
    if p.primary_key and isinstance(loader, KeyedLoader):
        keyed["keys"] = loader.distinct_keys(pipeline_name)
    if isinstance(loader, VersionedLoader):  # the rows the destination means: one per key, deletes applied, ...
        keyed["current"] = loader.count_current(pipeline_name, runs)
    if isinstance(loader, LineageLoader):
        by_run = loader.rows_by_run(pipeline_name)
        total: int | None = sum(by_run.values())
        return {"destination": loader.describe(), "total": total, "by_run": by_run, "exact": exact, **keyed}
    total = int(loader.count()) if isinstance(loader, CountingLoader) else None
    return {"destination": loader.describe(), "total": total, "by_run": None, "exact": exact, **keyed}


def max_position(pipeline_name: str, column: str, tie_breaker: str | None) -> dict[str, Any]:
    """The last row of the pipeline's destination in (column, tie_breaker) order (None when it holds no rows)."""
    p = get_pipeline(pipeline_name)
    for name in (column, tie_breaker):
        if name is not None and name not in p.schema.model_fields:
            raise ConfigError(f"pipeline {pipeline_name!r}: {name!r} is not a field of {p.schema.__name__}")
    if not isinstance(p.loader, KeyedLoader):
        raise ConfigError(f"pipeline {pipeline_name!r}: {p.loader!r} cannot read values back from its destination")
    position = p.loader.max_position(pipeline_name, column, tie_breaker)
    return {"position": None if position is None else list(position)}


def diff(pipeline_name: str, run_id: str, parent_run_id: str, drop: bool = True, sample: int = 10) -> dict[str, Any]:
    """A replay's shadow against its parent run's rows; the shadow is dropped afterwards unless `drop` is False."""
    loader = lineage(get_pipeline(pipeline_name))
    try:
        result = loader.diff(pipeline_name, parent_run_id, run_id, sample=sample)
    finally:
        if drop:
            loader.drop_shadow(pipeline_name, run_id)
    return dataclasses.asdict(result)


async def check_replay(ctx: ServiceContext, req: DiffRequest) -> None:
    """Raise unless the run state knows `req.run_id` as a shadow replay of `req.parent_run_id`: a diff drops that
    shadow, so it must be one a replay made."""
    if ctx.kv is None:
        raise TransientError("the loader has no run state yet")
    state = await get_run(ctx.kv, req.pipeline, req.run_id)
    if state is None or state.trigger != "replay" or not state.parent_run_id:
        raise ConfigError(f"pipeline {req.pipeline!r}: run {req.run_id!r} is not a replay run")
    if not state.shadow:
        raise ConfigError(f"pipeline {req.pipeline!r}: replay {req.run_id!r} did not load into a shadow (--diff)")
    if state.parent_run_id != req.parent_run_id:
        raise ConfigError(
            f"pipeline {req.pipeline!r}: replay {req.run_id!r} replays {state.parent_run_id!r}, "
            f"not {req.parent_run_id!r}"
        )


async def runs_of(ctx: ServiceContext, pipeline: str) -> RunView:
    """What the run state says about the pipeline's runs (replays' parents, incomplete and superseded runs)."""
    if not isinstance(ctx.kv, KeyValue):  # none yet, or a bucket that cannot list its keys (the in-memory one)
        return RunView()
    return run_view(await list_runs(ctx.kv, pipeline))


async def _count(ctx: ServiceContext, req: CountRequest) -> dict[str, Any]:
    return await asyncio.to_thread(count, req.pipeline, await runs_of(ctx, req.pipeline))


async def _query(ctx: ServiceContext, req: QueryRequest) -> dict[str, Any]:
    runs = await runs_of(ctx, req.pipeline)
    return await asyncio.to_thread(query, req.pipeline, req.sql, runs, req.max_rows, req.seconds, req.current)


async def _rows(ctx: ServiceContext, req: RowsRequest) -> dict[str, Any]:
    return await asyncio.to_thread(recent_rows, req.pipeline, await runs_of(ctx, req.pipeline), req.limit)


async def _max(ctx: ServiceContext, req: MaxRequest) -> dict[str, Any]:
    return await asyncio.to_thread(max_position, req.pipeline, req.column, req.tie_breaker)


async def _diff(ctx: ServiceContext, req: DiffRequest) -> dict[str, Any]:
    await check_replay(ctx, req)
    return await asyncio.to_thread(diff, req.pipeline, req.run_id, req.parent_run_id, req.drop, req.sample)


def read_request(model: type[M], data: bytes) -> M:
    """The request in `data`, read by its model; TerminalError when it is too large or not that request."""
    if len(data) > MAX_BODY:
        raise TerminalError(f"control request of {len(data)} bytes refused: the limit is {MAX_BODY}")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise TerminalError(f"malformed {model.__name__}: {problems}") from None


def _responder(
    ctx: ServiceContext, verb: str, model: type[M], work: Callable[[ServiceContext, M], Awaitable[dict[str, Any]]]
) -> Callable[[Any, NatsMessage], Awaitable[bytes]]:
    async def respond(body: Any, msg: NatsMessage) -> bytes:
        try:
            result = await work(ctx, read_request(model, msg.body))
            return orjson.dumps({"ok": True, "result": result}, default=str)
        except Exception as exc:  # the asker gets the error, classified; the loader stays up
            log.warning("control request refused or failed", verb=verb, error=f"{type(exc).__name__}: {exc}")
            return orjson.dumps({"ok": False, "error": str(exc) or type(exc).__name__, "disposition": classify(exc)})

    return respond


def make_control_router(ctx: ServiceContext) -> NatsRouter:
    """Core-NATS subscribers (no stream) for the loader's control verbs, in the `loader` queue group."""
    router = NatsRouter()
    for verb, responder in (
        ("count", _responder(ctx, "count", CountRequest, _count)),
        ("max", _responder(ctx, "max", MaxRequest, _max)),
        ("diff", _responder(ctx, "diff", DiffRequest, _diff)),
        ("query", _responder(ctx, "query", QueryRequest, _query)),
        ("rows", _responder(ctx, "rows", RowsRequest, _rows)),
    ):
        router.subscriber(subjects.control("loader", verb), queue="loader")(responder)
    return router
