"""One error taxonomy; it decides what happens to a message.

    JetlError
    ├── TransientError          retry: nak with backoff (network, timeouts, a server that is down)
    │   ├── DestinationUnavailable
    │   ├── StoreFull           a stream, bucket, the JetStream store or the archive has no room (names the setting)
    │   ├── Contention          a compare-and-set that kept losing to other writers of the same key
    │   └── WaitTimedOut        a client gave up waiting for a run (says what it waited for, and whether NATS is up)
    └── TerminalError           dead-letter: record why, then term (bad data, bad config, bugs in a transform)
        ├── ConfigError         a pipeline or setting that cannot work; raised at start-up where possible
        │   ├── DiscoveryError  a pipeline module that fails to import or registers a duplicate name
        │   └── NoDeployment    a NATS server without jetl's streams (only `jetl deploy` / `jetl up` create them)
        ├── RecordError         one or more records failed validation; carries the per-record reasons
        ├── SchemaMismatch      a batch whose schema hash differs from the pipeline's
        ├── ArchiveCorrupt      an archived batch whose checksum does not match its bytes
        └── OverlappingRun      a run that would start from a cursor an unfinished run is still moving

`classify()` maps any exception (including driver errors) onto transient or terminal, so no handler has to
guess and no unclassified exception drops or endlessly retries a message.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from jetl.redact import redact_url

Disposition = Literal["transient", "terminal"]


class JetlError(Exception):
    """Root of every error jetl raises on purpose."""

    disposition: Disposition = "terminal"


class TransientError(JetlError):
    """Worth retrying: the same input may succeed later."""

    disposition: Disposition = "transient"


class DestinationUnavailable(TransientError):
    """The destination (ClickHouse, a folder) could not be reached or written just now."""


class StoreFull(TransientError):
    """A stream, a bucket, the server's JetStream store or the raw-batch archive refused a write for want of room.

    Never a leader election or "is NATS running?": the message names the store, what it said, and the setting that
    raises its limit, and publishers pause on it (`jetl.bus.Bus`) until room returns.
    """

    def __init__(self, store: str, detail: str, setting: str) -> None:
        super().__init__(f"{store} is full ({detail}): raise {setting}, or free room in it")
        self.store, self.detail, self.setting = store, detail, setting


class Contention(TransientError):
    """A compare-and-set of a state key lost to concurrent writers at every try (`jetl.state.compare_and_set`): the
    same write succeeds once they are done, so it is retried like a network error, never dead-lettered."""


class WaitTimedOut(TransientError):
    """A client waited for a run to finish and gave up; the message says what it waited for and what it saw last."""

    def __init__(self, message: str, *, nats_up: bool) -> None:
        super().__init__(message)
        self.nats_up = nats_up
        """NATS answered when the wait gave up: the services, not the bus, are the place to look."""


class TerminalError(JetlError):
    """Retrying will not help; the input goes to the dead-letter stream with this error."""

    disposition: Disposition = "terminal"


class ConfigError(TerminalError):
    """A pipeline definition or a setting that cannot work (or an operator's request that cannot).

    `hint` is what the CLI suggests under the error: None for the general one (check the pipeline module or setting
    it names), "" for none (a bad argument, an unknown run: the message says it all).
    """

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class DiscoveryError(ConfigError):
    """A pipeline module failed to import, or registered a name that is already taken."""


class NoDeployment(ConfigError):
    """The NATS server reached holds no jetl deployment (streams, consumers, state bucket).

    Only `jetl deploy` and `jetl up` create them: any other command or a service meeting such a server is most
    likely pointed at the wrong one, and creating streams there would hide that (and plant jetl on a stranger's
    server). The CLI maps it to exit 3.
    """

    def __init__(self, url: str) -> None:
        super().__init__(
            f"this NATS at {redact_url(url)} has no jetl deployment; "
            "run `jetl deploy` or point JETL_NATS__URL/--context at the right one"
        )


class PermissionRefused(ConfigError):
    """NATS refused this client's user a subject: the user's role may not do that (`jetl.access`), which is a matter
    of configuration, not an outage. The CLI maps it to exit 2."""

    def __init__(self, violation: str, user: str | None) -> None:
        what = violation.removeprefix("nats: ").strip()
        what = (
            what[len("permissions violation for ") :] if what.lower().startswith("permissions violation for ") else what
        )
        super().__init__(f"NATS refused user {user or '(no user)'!r} permission to {what[:1].lower()}{what[1:]}")


_REFUSED: list[PermissionRefused] = []


def note_refusal(violation: str, user: str | None) -> PermissionRefused:
    """Record a permissions violation the server reported (asynchronously) on a connection of `user`."""
    refused = PermissionRefused(violation, user)
    _REFUSED.append(refused)
    del _REFUSED[:-1]  # the latest is the one a failing command hit
    return refused


def forget_refusals() -> None:
    """Forget the violations noted so far: a command starting judges its own connections' answers, not those of an
    earlier command of the same process (a test session, the dashboard)."""
    _REFUSED.clear()


def last_refusal() -> PermissionRefused | None:
    """The latest permissions violation a connection of this process was told of, if any."""
    return _REFUSED[-1] if _REFUSED else None


@dataclass
class RecordIssue:
    """Why one record was rejected: where it came from, which field, what was wrong."""

    index: int
    field: str
    message: str
    origin: str | None = None
    input: Any = None
    record: Any = None
    unreadable: bool = False
    """The input is not a record at all (malformed JSON, or JSON that is not an object): only its source can mend
    it, so a redrive does not take it."""

    def describe(self, pipeline: str = "") -> str:
        """A one-line message naming pipeline (when known), origin (file:line), record and field."""
        where = f" at {self.origin}" if self.origin else ""
        field = f"field {self.field!r}: " if self.field else ""
        named = f"pipeline {pipeline!r}: " if pipeline else ""
        return f"{named}record {self.index}{where}: {field}{self.message}"


@dataclass
class RecordError(TerminalError):
    """Records that failed validation or a transform; the rest of their batch goes on."""

    pipeline: str = ""
    """The pipeline, where the raiser knows it; a transformer does not (its stage knows which pipeline it runs)."""
    issues: list[RecordIssue] = field(default_factory=list)
    survivors: list[Any] | None = None
    """The records that passed, so a transformer can reject some and let the rest go on."""

    def __str__(self) -> str:
        head = "; ".join(i.describe(self.pipeline) for i in self.issues[:3])
        more = f" (+{len(self.issues) - 3} more)" if len(self.issues) > 3 else ""
        return head + more


class SchemaMismatch(TerminalError):
    """A batch produced under another schema than the one the pipeline now declares."""


class SchemaFrozen(TerminalError):
    """A batch whose records drift from the input model of a pipeline under `schema_contract="freeze"` (or in a
    field a per-field `Contract` freezes): it is held whole in the dead-letter stream, and its run fails naming the
    drift."""

    fails_run = True
    """Its run fails with it (`jetl.runtime.stage.reject_batch`): the run's cursor must not move past what it held."""


class ArchiveCorrupt(TerminalError):
    """An archived raw batch whose bytes do not match the checksum written with them (`jetl.archive`)."""


class OverlappingRun(TerminalError):
    """A run of a pipeline that keeps a cursor, requested while an earlier run of it had not finished: it would
    start from the cursor that run is about to move, and load what that run loads a second time."""


IN_PROCESS = 10158
"""JetStream's error code for a publish whose `Nats-Msg-Id` an earlier, timed-out publish is still storing ("duplicate
message id is in process"): transient, a retry is acknowledged as a duplicate once that one is stored."""


STORE_FAILED = 10077
"""JetStream's code for a message its stream would not store, with the reason as the description ("maximum bytes
exceeded", "maximum messages exceeded", a write the disk refused); it comes as a 503, like a stream with no leader."""
STORAGE_EXCEEDED = 10047
"""JetStream's "insufficient storage resources available": the server's `max_file_store` (or its disk) is used up."""
INSUFFICIENT_RESOURCES = 10023
"""JetStream's "insufficient resources": the server cannot take more (its store, or an account's limits)."""
_FULL_CODES = (STORE_FAILED, STORAGE_EXCEEDED, INSUFFICIENT_RESOURCES)


def refused_for_room(exc: BaseException) -> str | None:
    """What JetStream said when it refused a write for want of room (a full stream or bucket, a full store or disk),
    or None when `exc` is something else (a stream between leaders answers 503 too, without these codes)."""
    if getattr(exc, "err_code", None) not in _FULL_CODES:
        return None
    return str(getattr(exc, "description", None) or "no room")


def classify(exc: BaseException) -> Disposition:
    """Decide whether `exc` is worth a retry. Unknown errors are terminal: they go to the DLQ, never vanish."""
    if isinstance(exc, JetlError):
        return exc.disposition
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError, socket.gaierror)):
        return "transient"
    if getattr(exc, "err_code", None) == IN_PROCESS:
        return "transient"
    name = type(exc).__module__ + "." + type(exc).__name__
    transient_markers = (
        "httpx.ConnectError",
        "httpx.ReadTimeout",
        "httpx.ConnectTimeout",
        "httpx.RemoteProtocol",
        "OperationalError",
        "nats.errors.Timeout",
        "nats.errors.NoServers",
        "NoRespondersError",
        "NoStreamResponseError",  # a clustered stream between leaders: nobody stored the message yet
        "ServiceUnavailableError",  # 503 "JetStream system temporarily unavailable": a cluster electing its leaders
    )
    if any(m in name for m in transient_markers):
        if "OperationalError" in name and any(m in str(exc).lower() for m in _SETUP_MARKERS):
            return "terminal"  # a database that answers "no": retrying cannot change it
        return "transient"
    return "terminal"


# Driver OperationalErrors are mostly the network or a busy server (worth a retry), but these say the setup is wrong.
_SETUP_MARKERS = (
    "authentication failed",
    "password",
    "does not exist",
    "no such table",
    "no such column",
    "permission denied",
    "access denied",
    "syntax error",
)
