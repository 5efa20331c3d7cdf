"""Who may look and who may act: the access token, the CSRF check of every POST, and the name an action is logged under.

- Access: with a token configured (required off loopback), a request must carry it: `Authorization: Bearer`, the
  `jetl_ui_token` cookie, or `?token=` once (which sets the cookie and redirects to the same page without it).
- CSRF: double submit. Every page sets a random `jetl_csrf` cookie (SameSite=Strict) and writes the same value into
  its forms; a POST whose form field does not match the cookie, or whose Origin is another site, is refused (403).
"""

from __future__ import annotations

import getpass
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from jetl.errors import ConfigError

TOKEN_COOKIE = "jetl_ui_token"
CSRF_COOKIE = "jetl_csrf"
CSRF_FIELD = "csrf"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the dashboard on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without an access token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"binding {host} serves the dashboard beyond this machine: give an access token "
            "(--token or JETL_UI__TOKEN), or bind 127.0.0.1"
        )


def csrf_token(request: Request) -> str:
    """The CSRF value of this browser (the cookie's, or a new one the response will set)."""
    value = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if not value:
        value = request.state.new_csrf = secrets.token_urlsafe(24)
    return str(value)


def actor(request: Request) -> str:
    """Who an action is recorded as: the server's OS user and the browser's address."""
    host = request.client.host if request.client else "?"
    return f"ui:{getpass.getuser()}@{host}"


async def check_csrf(request: Request) -> str | None:
    """Why a POST is refused (None: it may go on)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    await request.body()  # read whole first: the middleware hands a read body on to the endpoint, a read stream not
    form = await request.form()
    sent = str(form.get(CSRF_FIELD, ""))
    if not cookie or not sent or not secrets.compare_digest(cookie, sent):
        return "missing or wrong CSRF token: reload the page and try again"
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
        return f"cross-site request from {origin} refused"
    return None


def access_middleware(
    token: str | None,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """An HTTP middleware: the access token (when one is set), the CSRF check of POSTs, the CSRF cookie."""

    def allowed(request: Request) -> bool:
        if not token:
            return True
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = bearer or request.cookies.get(TOKEN_COOKIE, "")
        return bool(given) and secrets.compare_digest(given, token)

    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token and "token" in request.query_params:
            if not secrets.compare_digest(request.query_params["token"], token):
                return PlainTextResponse("wrong access token", status_code=401)
            rest = {k: v for k, v in request.query_params.items() if k != "token"}
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            resp: Response = RedirectResponse(target, status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return resp
        if not allowed(request):
            return PlainTextResponse("access token required: open the dashboard with ?token=...", status_code=401)
        if request.method == "POST":
            why = await check_csrf(request)
            if why is not None:
                return PlainTextResponse(why, status_code=403)
        resp = await call_next(request)
        new = getattr(request.state, "new_csrf", None)
        if new:
            resp.set_cookie(CSRF_COOKIE, new, samesite="strict", httponly=True)
        return resp

    return middleware
