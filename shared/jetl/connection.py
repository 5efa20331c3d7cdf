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
from pathlib import Path
from typing import Any, get_args, get_origin

import nats
from nats.aio.client import Client
from pydantic import BaseModel, Field, SecretStr

from jetl import subjects
from jetl.errors import TransientError, note_refusal


class TlsSettings(BaseModel):
    """TLS for a client connection."""

    ca_file: Path | None = None
    """CA bundle that signs the server certificate."""
    cert_file: Path | None = None
    """Client certificate, for mutual TLS."""
    key_file: Path | None = None
    """Client private key, for mutual TLS."""
    hostname: str | None = None
    """Server name to verify, when it differs from the URL's host."""


class NatsSettings(BaseModel):
    """How to reach NATS JetStream."""

    url: str = "nats://127.0.0.1:4222"
    """One or more server URLs, comma-separated."""
    user: str | None = None
    """User name, with `password`."""
    password: SecretStr | None = None
    """Password for `user`."""
    token: SecretStr | None = None
    """Auth token."""
    nkey_seed_file: Path | None = None
    """NKey seed file."""
    creds_file: Path | None = None
    """JWT credentials file."""
    inbox_prefix: str | None = None
    """Prefix of this client's reply inboxes. Default: `_INBOX.<user>` for a user named as a jetl role (the only
    inboxes its permissions let it hear: `jetl.access`), `_INBOX` otherwise. Set it to `_INBOX.<role>` where a
    service's user is not named as its role (an NKey or creds file)."""
    tls: TlsSettings = Field(default_factory=TlsSettings)
    """TLS options; any file set here turns TLS on."""
    connect_timeout: float = 5.0
    """Seconds to wait for a connection."""
    ping_interval: float = 5.0
    """Seconds between a client's PINGs to its server. After `max_outstanding_pings` unanswered ones the connection
    is stale and the client moves to another server of the seed list: a server cut off from the network (its
    process alive, its packets dropped) is left in about `ping_interval * (max_outstanding_pings + 1)` seconds, not
    nats-py's default of minutes. A PING is a few bytes."""
    max_outstanding_pings: int = 2
    """Unanswered PINGs after which the connection counts as stale (see `ping_interval`)."""
    stream_replicas: int = 1
    """Replicas of each stream (3 on a cluster)."""
    ack_wait: float = 10.0
    """Seconds a stage may hold a message without an ack or an in_progress() beat before JetStream redelivers it:
    a crashed worker's messages come back after this; live workers beat every third of it. A consumer setting:
    `jetl deploy` / `jetl up` apply it, so set it where they run."""
    deployment_wait: float = 120.0
    """Seconds a starting service waits for `jetl deploy` to have declared the streams before it gives up."""
    stream_max_bytes: dict[str, int] = Field(default_factory=dict)
    """Byte limit per stream kind (`raw`, `clean`, `events`, `dlq`, `logs`, `run`), overriding jetl.subjects.STREAMS."""
    state_max_bytes: int = 1024 * 1024 * 1024
    """Byte limit of the run-state KV bucket (full: writes are refused, never old state dropped)."""
    run_state_ttl_days: float = 90.0
    """Days a run's state and batch keys live after their last write (rebuildable from JETL_EVENTS); cursors,
    pause flags and schedule marks never expire."""
    full_wait: float = 86400.0
    """Seconds a service's publish to a full stream (or a full JetStream store) waits for room, its input kept alive,
    before the input is retried as a failure: ingestion pauses, and resumes by itself when the consumers downstream
    catch up or disk is freed. Commands (`jetl run`, ...) never wait: they report the full stream at once."""
    heartbeat_ttl_s: float = 3600.0
    """Seconds a service instance's heartbeat key outlives its last beat (a dead instance's key goes away)."""

    @property
    def servers(self) -> list[str]:
        """The URL list."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


def _tls_context(s: NatsSettings) -> ssl.SSLContext | None:
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


def connect_options(s: NatsSettings) -> dict[str, Any]:
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


async def connect(s: NatsSettings, **extra: Any) -> Client:
    """A plain nats-py connection (CLI commands and administration)."""
    opts = connect_options(s)
    if "error_cb" in extra:  # the caller's callback still hears everything but permission violations
        extra = {**extra, "error_cb": refusals_noted(s.user, extra["error_cb"])}
    opts.update(extra)
    return await nats.connect(**opts)


async def fail_fast_connection(s: NatsSettings) -> Client:
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
