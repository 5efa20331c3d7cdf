"""The loader's request/reply verbs: questions only the loader can answer, because only it holds the destination
(a chdb folder opens in one process at a time).

- `jetl.ctl.loader.count` {"pipeline"} -> {"destination", "total", "by_run", "exact", "key", "keys"}
- `jetl.ctl.loader.max` {"pipeline", "column", "tie_breaker"} -> {"position"}: the last row's [value, key] in that
  order, or None (seeds a cursor)
- `jetl.ctl.loader.diff` {"pipeline", "run_id", "parent_run_id", "drop", "sample"} -> a `Diff` as a dict

Every reply is `{"ok": true, "result": ...}` or `{"ok": false, "error", "disposition"}` (transient or terminal,
classified by jetl.errors), so the CLI can tell "try again" from "this cannot work". Replicas answer in one queue
group: one answer per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from faststream.nats import NatsRouter

from jetl import subjects
from jetl.errors import ConfigError, classify
from jetl.logging import get_logger
from jetl.protocols import KeyedLoader, LineageLoader
from jetl.registry import get_pipeline
from jetl.runtime.service import ServiceContext
from jetl_loader.lineage import lineage

log = get_logger("jetl.loader")


def count(pipeline_name: str) -> dict[str, Any]:
    """Rows in a pipeline's destination, per run when the loader keeps lineage (None where it cannot count), and its
    distinct primary keys when the pipeline declares one."""
    p = get_pipeline(pipeline_name)
    loader = p.loader
    exact = getattr(loader, "mode", "append") != "merge" and not p.primary_key  # a key's older rows merge away
    keyed: dict[str, Any] = {"key": list(p.primary_key), "keys": None}
    if p.primary_key and isinstance(loader, KeyedLoader):
        keyed["keys"] = loader.distinct_keys(pipeline_name)
    if isinstance(loader, LineageLoader):
        by_run = loader.rows_by_run(pipeline_name)
        total: int | None = sum(by_run.values())
        return {"destination": loader.describe(), "total": total, "by_run": by_run, "exact": exact, **keyed}
    counter = getattr(loader, "count", None)
    total = int(counter()) if callable(counter) else None
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


def _responder(work: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], Awaitable[bytes]]:
    async def respond(body: dict[str, Any]) -> bytes:
        try:
            result = await asyncio.to_thread(work, body)
            return orjson.dumps({"ok": True, "result": result}, default=str)
        except Exception as exc:  # the asker gets the error, classified; the loader stays up
            log.warning("control request failed", error=f"{type(exc).__name__}: {exc}")
            return orjson.dumps({"ok": False, "error": str(exc) or type(exc).__name__, "disposition": classify(exc)})

    return respond


def make_control_router(ctx: ServiceContext) -> NatsRouter:
    """Core-NATS subscribers (no stream) for the loader's control verbs, in the `loader` queue group."""
    router = NatsRouter()
    verbs: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "count": lambda b: count(b["pipeline"]),
        "max": lambda b: max_position(b["pipeline"], b["column"], b.get("tie_breaker")),
        "diff": lambda b: diff(
            b["pipeline"], b["run_id"], b["parent_run_id"], bool(b.get("drop", True)), int(b.get("sample", 10))
        ),
    }
    for verb, work in verbs.items():
        router.subscriber(subjects.control("loader", verb), queue="loader")(_responder(work))
    return router
