"""Who may do what on the bus: one NATS user per service and an operator user, with permissions generated from the
subject builder, so they cannot drift from the subjects the services use.

- `extractor` consumes run requests (its durable on JETL_RUNS) and publishes raw batches, and the partitions of a run
  it plans back onto JETL_RUNS (never a run request: `subjects.partition_pattern`);
- `transformer` consumes raw batches and publishes clean batches, and archives them (the `archiver` durable);
- `loader` consumes clean batches and answers the loader's control verbs;
- `scheduler` publishes run requests, folds the event log (the `tracker` durable on JETL_EVENTS) and pulls
  JetStream's max-deliveries advisories (the `watchdog` durable on JETL_ADVISORIES: a batch no stage could finish is
  dead-lettered, its run failed);
- every service publishes lifecycle events and log lines, reads and writes the state bucket, reads streams back
  through ephemeral consumers, and answers its own `health` verb;
- `operator` (the CLI, `jetl deploy`, the dashboard) may do anything, JetStream administration included.

No service user may create, change, purge or delete a stream or a durable consumer, ack another stage's messages, or
publish another stage's output. `jetl up` generates the passwords on first start and keeps them, owner-only, in its
data folder (`Credentials`).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, SecretStr

from jetl import subjects
from jetl.subjects import CONSUMERS, Kind

Role = Literal["extractor", "transformer", "loader", "scheduler", "operator"]
ROLES: tuple[Role, ...] = ("extractor", "transformer", "loader", "scheduler", "operator")
SERVICE_ROLES: tuple[Role, ...] = ("extractor", "transformer", "loader", "scheduler")

# What each service publishes besides events and logs, and which durables it consumes from.
_OUTPUTS: dict[str, tuple[Kind, ...]] = {
    "extractor": (Kind.RAW, Kind.DLQ),
    "transformer": (Kind.CLEAN, Kind.DLQ),
    "loader": (Kind.DLQ,),
    "scheduler": (Kind.RUN, Kind.DLQ),  # the watchdog dead-letters a batch that reached max_deliver
}
_DURABLES: dict[str, tuple[str, ...]] = {
    "extractor": ("extractor",),
    "transformer": ("transformer", "archiver"),
    "loader": ("loader",),
    "scheduler": ("tracker", "watchdog"),
}


@dataclass(frozen=True)
class Permissions:
    """Subjects one user may publish to and subscribe to (NATS allow lists; anything else is denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_config(self) -> dict[str, object]:
        """The `permissions` block of a nats-server user."""
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


def permissions(role: Role) -> Permissions:
    """The permissions of one role, from the subject builder."""
    if role == "operator":
        return Permissions(publish=(subjects.ALL,), subscribe=(subjects.ALL,))
    publish = [
        subjects.pattern(Kind.EVENTS),
        subjects.pattern(Kind.LOGS),
        *(subjects.pattern(kind) for kind in _OUTPUTS[role]),
        *([subjects.partition_pattern()] if role == "extractor" else []),
        *subjects.kv_access(subjects.STATE_BUCKET),
        *subjects.js_read_access(),
        subjects.INBOX,  # answering a control request (health, the loader's verbs)
    ]
    if Kind.DLQ in _OUTPUTS[role]:  # a dead letter too large for a message keeps its body in the object store
        publish.extend(subjects.object_store_access(subjects.DLQ_BODIES_BUCKET))
    for durable in _DURABLES[role]:
        publish.extend(subjects.js_consume_access(CONSUMERS[durable], durable))
    subscribe = [subjects.INBOX, subjects.control_pattern(role)]
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))


class Credentials(BaseModel):
    """The generated users of one stack: name -> password."""

    passwords: dict[str, SecretStr]

    @classmethod
    def generate(cls) -> Credentials:
        """Fresh random passwords for every role."""
        return cls(passwords={role: SecretStr(secrets.token_urlsafe(24)) for role in ROLES})

    def password(self, role: Role) -> SecretStr:
        """The password of `role`."""
        return self.passwords[role]

    def server_config(self) -> str:
        """The `authorization` block of nats-server's config: every user with its permissions, and no anonymous
        access (a client without credentials is refused, on loopback too)."""
        return authorization({role: json.dumps(pw.get_secret_value()) for role, pw in self.passwords.items()})

    def save(self, path: Path) -> None:
        """Write them owner-only (0600), atomically."""
        data = {role: pw.get_secret_value() for role, pw in self.passwords.items()}
        write_private(path, json.dumps(data, indent=2))

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """The stack's credentials: the ones kept at `path`, or new ones written there on first start."""
        if path.exists():
            stored = json.loads(path.read_text())
            creds = cls(passwords={k: SecretStr(v) for k, v in stored.items()})
            if all(role in creds.passwords for role in ROLES):
                return creds
        creds = cls.generate()
        creds.save(path)
        return creds


def authorization(passwords: dict[str, str]) -> str:
    """nats-server's `authorization` block for every role, each password given as config text: a quoted string,
    or a `$VARIABLE` that nats-server reads from its environment (compose/nats.conf)."""
    marks = {role: f"@@{role}@@" for role in ROLES}
    users = [{"user": r, "password": marks[r], "permissions": permissions(r).as_config()} for r in ROLES]
    text = "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"
    for role, mark in marks.items():
        text = text.replace(json.dumps(mark), passwords[role])
    return text


def compose_authorization() -> str:
    """The block compose/nats.conf carries: passwords from `$JETL_NATS_<ROLE>_PASSWORD`."""
    return authorization({role: f"$JETL_NATS_{role.upper()}_PASSWORD" for role in ROLES})


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by the owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
