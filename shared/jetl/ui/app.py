"""The dashboard as an ASGI app: pages, actions, live streams and the packaged static files, behind the access
token and the CSRF check (`jetl.ui.security`). `jetl ui` serves it with uvicorn."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import jetl.ui.actions as actions
import jetl.ui.live as live
import jetl.ui.pages as pages
from jetl.settings import JetlSettings
from jetl.ui.security import access_middleware, allowed_hosts, check_bind, read_token_file
from jetl.ui.state import Dashboard

STATIC = Path(__file__).parent / "static"


async def _timed(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    request.state.t0 = time.perf_counter()
    resp = await call_next(request)
    resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - request.state.t0) * 1e3:.1f}"
    return resp


def ui_token(s: JetlSettings) -> str | None:
    """The access token: `ui.token` (from the environment), else the contents of `ui.token_file`, else None."""
    if s.ui.token is not None:
        return s.ui.token.get_secret_value() or None
    return read_token_file(s.ui.token_file) if s.ui.token_file is not None else None


def create_app(settings: JetlSettings | None = None) -> Starlette:
    """The dashboard app on these settings (connects to NATS when it starts); ConfigError when it would serve
    beyond this machine, or where a token is required, without one (`security.check_bind`)."""
    s = settings or JetlSettings()
    token = ui_token(s)
    check_bind(s.ui.host, token, require_token=s.ui.require_token)
    hosts = allowed_hosts(s.ui.host, s.ui.allowed_hosts)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dashboard = Dashboard(s)
        await dashboard.start()
        app.state.dashboard = dashboard
        try:
            yield
        finally:
            await dashboard.stop()

    routes = [
        Route("/", pages.overview),
        Route("/runs", pages.runs),
        Route("/runs/{pipeline}/{run_id}", pages.run_page),
        Route("/pipelines/{pipeline}", pages.pipeline_page),
        Route("/pipelines/{pipeline}/pause", actions.pause, methods=["POST"]),
        Route("/pipelines/{pipeline}/resume", actions.resume, methods=["POST"]),
        Route("/pipelines/{pipeline}/run", actions.run_now, methods=["POST"]),
        Route("/pipelines/{pipeline}/backfill", actions.backfill, methods=["POST"]),
        Route("/dlq", pages.dead_letters),
        Route("/dlq/redrive", actions.redrive, methods=["POST"]),
        Route("/diff", pages.diff_page),
        Route("/live/runs", live.runs_stream),
        Route("/live/logs/{pipeline}/{run_id}", live.logs_stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(BaseHTTPMiddleware, dispatch=_timed),
        # a new CSRF secret per server: pages served before a restart must be reloaded to act
        Middleware(BaseHTTPMiddleware, dispatch=access_middleware(token, hosts, secrets.token_bytes(32))),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={404: pages.not_found})
