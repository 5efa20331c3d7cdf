"""Who may look and who may act: the Host check, the access token, the CSRF check of every POST, and the name an
action is logged under.

- Host: a request must name the dashboard by a loopback name, its bind address or a configured name
  (`UiSettings.allowed_hosts`). A page of another site whose name was pointed at 127.0.0.1 (DNS rebinding) sends
  its own name, and is refused (421) before anything else is looked at.
- Access: with a token configured (required off loopback, and on loopback with `require_token`), a request must carry
  it: `Authorization: Bearer`, the `jetl_ui_token` cookie, or `?token=` once (which sets the cookie and redirects to
  the same page without it). The token comes from the environment or a file (`token_file`), never a command line,
  which every local user can read in the process list.
- CSRF: signed double submit. Every page sets a `jetl_csrf` cookie (SameSite=Strict) of a random value and its HMAC
  under a secret only this server holds, and writes the same value into its forms; a POST is refused (403) when the
  cookie's signature is not this server's (a cookie planted by another page or a sibling site), when the form field
  does not match the cookie, or when its Origin is another site or `null` (a sandboxed frame, a data: page).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
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


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names that always mean this machine."""


def check_bind(host: str, token: str | None, *, require_token: bool = False) -> None:
    """Refuse to serve beyond this machine (or, with `require_token`, at all) without an access token."""
    if not token and (require_token or not is_loopback(host)):
        why = "it requires one (require_token)" if require_token else f"binding {host} serves it beyond this machine"
        raise ConfigError(
            f"the dashboard needs an access token: {why}. Give one in JETL_UI__TOKEN or a file (--token-file, "
            "JETL_UI__TOKEN_FILE)" + ("" if require_token else ", or bind 127.0.0.1")
        )


def read_token_file(path: Path) -> str:
    """The access token kept in `path`: a file of this user's that no one else may read (ConfigError otherwise)."""
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard's token file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.getuid():
        raise ConfigError(f"the dashboard's token file {path} must be yours and owner-only (chmod 600 {path})")
    if not text:
        raise ConfigError(f"the dashboard's token file {path} is empty")
    return text


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port and brackets, lower case."""
    name = host_header.strip().lower()
    if name.startswith("["):
        return name[1:].partition("]")[0]
    return name.rpartition(":")[0] if name.count(":") == 1 else name


def allowed_hosts(bind: str, configured: list[str]) -> frozenset[str]:
    """The names a request may give in its Host header: loopback ones, the bind address (unless a wildcard), and
    the configured ones."""
    names = set(LOOPBACK_NAMES) | {host_name(h) for h in configured}
    if bind not in ("0.0.0.0", "::", ""):
        names.add(host_name(bind))
    return frozenset(names)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of a value a request gave (any text: bytes, never a TypeError) and the expected one."""
    return hmac.compare_digest(given.encode(errors="surrogateescape"), expected.encode())


def _sign(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]


def _signed(secret: bytes, value: str) -> bool:
    """Whether a CSRF value is `<nonce>.<this server's HMAC of it>`."""
    nonce, _, sig = value.partition(".")
    return bool(nonce) and _same(sig, _sign(secret, nonce))


def csrf_token(request: Request) -> str:
    """The CSRF value of this browser: the cookie's when this server signed it, else a new one the response sets."""
    secret: bytes = request.state.csrf_secret  # set by the middleware
    value = request.cookies.get(CSRF_COOKIE, "")
    if not _signed(secret, value):
        value = getattr(request.state, "new_csrf", None) or ""
        if not value:
            nonce = secrets.token_urlsafe(18)
            value = request.state.new_csrf = f"{nonce}.{_sign(secret, nonce)}"
    return str(value)


def actor(request: Request) -> str:
    """Who an action is recorded as: the server's OS user and the browser's address."""
    host = request.client.host if request.client else "?"
    return f"ui:{getpass.getuser()}@{host}"


async def check_csrf(request: Request, secret: bytes) -> str | None:
    """Why a POST is refused (None: it may go on)."""
    origin = request.headers.get("origin")
    if origin == "null":  # a sandboxed frame or a data: page hides where it comes from: never an action of ours
        return "a request from an opaque origin (Origin: null) refused"
    if origin and urlsplit(origin).netloc != request.url.netloc:
        return "cross-site request refused"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    await request.body()  # read whole first: the middleware hands a read body on to the endpoint, a read stream not
    form = await request.form()
    sent = str(form.get(CSRF_FIELD, ""))
    if not cookie or not sent or not _same(sent, cookie) or not _signed(secret, cookie):
        return "missing or wrong CSRF token: reload the page and try again"
    return None


def access_middleware(
    token: str | None, hosts: frozenset[str], secret: bytes
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """An HTTP middleware: the Host check, the access token (when one is set), the CSRF check of POSTs (signed with
    `secret`), the CSRF cookie."""

    def allowed(request: Request) -> bool:
        if not token:
            return True
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = bearer or request.cookies.get(TOKEN_COOKIE, "")
        return bool(given) and _same(given, token)

    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if host_name(request.headers.get("host", "")) not in hosts:
            return PlainTextResponse("this dashboard does not answer to that host name", status_code=421)
        request.state.csrf_secret = secret
        if token and "token" in request.query_params:
            if not _same(request.query_params["token"], token):
                return PlainTextResponse("wrong access token", status_code=401)
            rest = {k: v for k, v in request.query_params.items() if k != "token"}
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            resp: Response = RedirectResponse(target, status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return resp
        if not allowed(request):
            return PlainTextResponse("access token required: open the dashboard with ?token=...", status_code=401)
        if request.method == "POST":
            why = await check_csrf(request, secret)
            if why is not None:
                return PlainTextResponse(why, status_code=403)
        resp = await call_next(request)
        new = getattr(request.state, "new_csrf", None)
        if new:
            resp.set_cookie(CSRF_COOKIE, new, samesite="strict", httponly=True)
        return resp

    return middleware
