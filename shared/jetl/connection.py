"""How a client reaches NATS: the settings section (`NatsSettings`, the `nats` field of `JetlSettings`), the
connection options built from it, and a quick read of that section from the environment and a stack context.

Kept apart from `jetl.settings` and `jetl.bus` so a command that only reads the state bucket (`jetl status`) connects
without importing pydantic-settings, FastStream, structlog or the message models (`bench/cli_latency.py` holds it to
its goal). `jetl.settings` and `jetl.bus` re-export what they always did.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import nats
from nats.aio.client import Client

from jetl import subjects
from jetl.errors import TransientError, note_refusal

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jetl.natssettings import NatsSettings as NatsSettings
    from jetl.natssettings import TlsSettings as TlsSettings


def __getattr__(name: str) -> Any:  # the pydantic models, imported when asked for (`jetl.natssettings`)
    if name not in ("NatsSettings", "TlsSettings"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import jetl.natssettings

    return getattr(jetl.natssettings, name)


class Secret:
    """A password or token read by `plain_nats_settings`: shown masked, as pydantic's `SecretStr` is."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"


@dataclass(frozen=True)
class PlainTls:
    """`TlsSettings` unset (`PlainNats` has no TLS)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class PlainNats:
    """The part of `NatsSettings` a connection is made from, with its defaults, for `plain_nats_settings`: a
    test holds the defaults to NatsSettings' own (tests/jetl/test_connection.py)."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    inbox_prefix: str | None = None
    tls: PlainTls = field(default_factory=PlainTls)
    connect_timeout: float = 5.0
    ping_interval: float = 5.0
    max_outstanding_pings: int = 2

    @property
    def servers(self) -> list[str]:
        """The URL list."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


def _tls_context(s: NatsSettings | PlainNats) -> ssl.SSLContext | None:
    t = s.tls
    if not (t.ca_file or t.cert_file):
        return None
    ctx = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
    if t.cert_file:
        ctx.load_cert_chain(str(t.cert_file), str(t.key_file) if t.key_file else None)
    return ctx


ErrorCallback = Callable[[Exception], Awaitable[None]]


def refusals_noted(user: str | None, then: ErrorCallback | None = None) -> ErrorCallback:
    """A connection's error callback that records a permissions violation (`jetl.errors.note_refusal`), logged once
    per subject, so that a command that then times out says which permission its user lacks instead of blaming an
    outage; any other error goes to `then` (nats-py's logging by default)."""
    seen: set[str] = set()

    async def on_error(exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower():
            # nats-py lowers the server's whole message: give the subject back its case
            text = re.sub(r'"([^"]*)"', lambda m: f'"{subjects.restore_case(m.group(1))}"', text)
            refused = note_refusal(text, user)
            if text not in seen:
                seen.add(text)
                logging.getLogger("jetl.bus").warning(str(refused))
            return
        if then is not None:
            await then(exc)
        else:
            logging.getLogger("nats.aio.client").error("nats: encountered error", exc_info=exc)

    return on_error


def connect_options(s: NatsSettings | PlainNats) -> dict[str, Any]:
    """Options shared by nats-py and FastStream's broker: auth (user/password, token, NKey, creds) and TLS."""
    opts: dict[str, Any] = {
        "servers": s.servers,
        "connect_timeout": int(max(1, s.connect_timeout)),
        "ping_interval": max(1, int(s.ping_interval)),
        "max_outstanding_pings": s.max_outstanding_pings,
        # a role hears replies only on its own inboxes (`jetl.access`): requests must be sent from them
        "inbox_prefix": s.inbox_prefix or subjects.inbox_prefix(s.user),
        "error_cb": refusals_noted(s.user),
    }
    if s.user:
        opts["user"] = s.user
        if s.password:
            opts["password"] = s.password.get_secret_value()
    if s.token:
        opts["token"] = s.token.get_secret_value()
    if s.nkey_seed_file:
        opts["nkeys_seed"] = str(s.nkey_seed_file)
    if s.creds_file:
        opts["user_credentials"] = str(s.creds_file)
    tls = _tls_context(s)
    if tls is not None:
        opts["tls"] = tls
        if s.tls.hostname:
            opts["tls_hostname"] = s.tls.hostname
    return opts


async def connect(s: NatsSettings | PlainNats, **extra: Any) -> Client:
    """A plain nats-py connection (CLI commands and administration)."""
    opts = connect_options(s)
    if "error_cb" in extra:  # the caller's callback still hears everything but permission violations
        extra = {**extra, "error_cb": refusals_noted(s.user, extra["error_cb"])}
    opts.update(extra)
    return await nats.connect(**opts)


async def fail_fast_connection(s: NatsSettings | PlainNats) -> Client:
    """A nats-py connection that fails fast (no reconnect loop) with one clear error."""

    async def quiet(exc: Exception) -> None:  # nats-py prints a traceback per failed attempt otherwise
        return None

    try:
        # max_reconnect_attempts=0 would make nats-py retry forever; 1 fails fast
        return await connect(
            s, allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=quiet
        )
    except Exception as exc:
        raise TransientError(f"cannot reach NATS at {s.url}: {type(exc).__name__} {exc}") from exc


ENV_PREFIX = "jetl_"
"""`JetlSettings`'s environment prefix (lower case: its variables are read case-insensitively)."""
NESTED = "__"
"""`JetlSettings`'s nesting delimiter."""


def _scalar(cls: type[BaseModel], name: str) -> bool:
    """Whether `name` is a field of `cls` that pydantic-settings reads from one variable as text (not as JSON)."""
    from pydantic import BaseModel

    field = cls.model_fields.get(name)
    if field is None:
        return False
    kinds = (field.annotation, *get_args(field.annotation))
    return not any(
        get_origin(t) in (dict, list) or (isinstance(t, type) and issubclass(t, (BaseModel, dict, list))) for t in kinds
    )


def env_value(environ: Mapping[str, str], name: str) -> str | None:
    """The environment's value of the top-level setting `name` (`JETL_<NAME>`, any case), as pydantic-settings
    reads it: of several spellings, the last one set."""
    want, found = f"{ENV_PREFIX}{name}", None
    for key, value in environ.items():
        if key.lower() == want:
            found = value
    return found


def quick_nats_settings(environ: Mapping[str, str], context: Mapping[str, Any] | None) -> NatsSettings | None:
    """`JetlSettings.nats` as `jetl.settings.settings_with_context(context)` (or `JetlSettings()` without a
    context) reads it from `environ`, without pydantic-settings; None when the environment sets it in a way only
    pydantic-settings reads (a JSON value: `JETL_NATS`, `JETL_NATS__TLS`, `JETL_NATS__STREAM_MAX_BYTES`, or a name
    that is no field), and the caller takes the full path. `context` is `StackContext.settings_values()["nats"]`.

    The same class validates the values, so types, defaults and secrets are NatsSettings' own; a differential test
    holds this to pydantic-settings on generated environments (tests/jetl/test_connection.py).
    """
    from jetl.natssettings import NatsSettings, TlsSettings

    env: dict[str, Any] = {}
    prefix = f"{ENV_PREFIX}nats"
    for key, value in environ.items():
        low = key.lower()
        if not low.startswith(prefix):
            continue
        path = low[len(ENV_PREFIX) :].split(NESTED)
        if path == ["nats"] or path[0] != "nats":  # JSON of the whole section, or another setting (`nats_x`)
            if path == ["nats"]:
                return None
            continue
        if len(path) == 2 and _scalar(NatsSettings, path[1]):
            env[path[1]] = value
        elif len(path) == 3 and path[1] == "tls" and _scalar(TlsSettings, path[2]):
            env.setdefault("tls", {})[path[2]] = value
        else:
            return None
    values: dict[str, Any] = {}
    if context is not None and "url" not in env:  # a URL of its own: the context's credentials stay out
        values = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in context.items()}
    for key, value in env.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return NatsSettings.model_validate(values)


PLAIN_FIELDS = ("url", "user", "password", "token", "inbox_prefix")
"""The NATS settings `plain_nats_settings` takes: text as it is, which `NatsSettings` takes as it is too."""


def plain_nats_settings(environ: Mapping[str, str]) -> PlainNats | None:
    """`quick_nats_settings(environ, None)` without pydantic, for an environment that sets no NATS setting but
    `PLAIN_FIELDS` (`JETL_NATS__URL`, ...: any text is valid there); None otherwise, and the caller reads it with
    `quick_nats_settings`. Only without a stack context (whose credentials a command reads with its model)."""
    values: dict[str, Any] = {}
    for key, value in environ.items():
        path = key.lower()[len(ENV_PREFIX) :].split(NESTED) if key.lower().startswith(f"{ENV_PREFIX}nats") else []
        if not path or path[0] != "nats":  # another setting (`JETL_NATSY`)
            continue
        if len(path) != 2 or path[1] not in PLAIN_FIELDS:
            return None
        values[path[1]] = Secret(value) if path[1] in ("password", "token") else value
    return PlainNats(**values)
