"""The loader service: `jetl serve loader` (any number of replicas share one durable consumer)."""

from __future__ import annotations

import asyncio

from faststream import FastStream

from jetl.protocols import ReachableLoader
from jetl.redact import redact_text
from jetl.registry import on_reload
from jetl.runtime.service import ServiceContext, build_app
from jetl_loader.handlers import make_router, open_loaders
from jetl_loader.settings import LoaderSettings


def check_destinations(ctx: ServiceContext) -> str:
    """Reach every destination the pipelines write to: `SELECT 1` on each ClickHouse, a writable folder for files.

    Runs in the loader because the loader owns the connection (a chdb folder opens in one process at a time).
    """
    seen: list[str] = []
    for p in ctx.pipelines.values():
        where = p.loader.describe()
        if where in seen:
            continue
        if isinstance(p.loader, ReachableLoader):
            try:
                p.loader.reach()
            except Exception as exc:  # the driver's text may quote the DSN: `jetl health` shows it redacted
                raise OSError(f"{where}: {redact_text(str(exc), ctx.settings.clickhouse.password)}") from None
        seen.append(where)
    return f"reachable: {', '.join(seen)}" if seen else "no destinations (no pipelines)"


def create_app(settings: LoaderSettings | None = None) -> FastStream:
    """Build the loader app."""
    app = build_app("loader", settings or LoaderSettings(), make_router)
    ctx: ServiceContext = app.context.get("jetl_service")
    on_reload(lambda _pipelines: open_loaders(ctx))  # a pipeline added at run time gets its destination too

    async def destination() -> str:
        return await asyncio.to_thread(check_destinations, ctx)

    ctx.health_checks["destination"] = destination
    return app
