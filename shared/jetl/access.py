"""Who may do what on the bus: one NATS user per service and an operator user, with permissions generated from the
subject builder, so they cannot drift from the subjects the services use. Assume one service's password leaks: its
permissions still confine it to its stage's work.

- `extractor` consumes run requests (its durable on JETL_RUNS) and publishes raw batches, and the partitions of a run
  it plans back onto JETL_RUNS (never a run request: `subjects.partition_pattern`); it reads JETL_RAW (replays) and
  JETL_DLQ (redrives) message by message;
- `transformer` consumes raw batches and publishes clean batches, and archives them (the `archiver` durable);
- `loader` consumes clean batches and answers the loader's control verbs;
- `scheduler` publishes run requests, folds the event log (the `tracker` durable on JETL_EVENTS) into run state and
  cursors, and pulls JetStream's max-deliveries advisories (the `watchdog` durable on JETL_ADVISORIES: it reads the
  message that no stage could finish and dead-letters it);
- every service publishes lifecycle events only on its own role's subjects (`jetl.events.*.*.<role>`: the tracker
  trusts each event type only from the roles whose work it is), dead letters only of its own stage, log lines, and
  the state bucket's keys under its own prefixes (its heartbeat; the scheduler also run state and cursors); it hears
  replies only on its own inbox prefix (`_INBOX.<role>.>`), answers requests only through the reply subject of the
  request it got (`allow_responses`), and answers its own control verbs;
- `operator` (the CLI, `jetl deploy`, the dashboard) may do anything, JetStream administration included.

No service user may create, change, purge or delete a stream or any consumer (so no push delivery to a subject of
its choosing), ack another stage's messages, read a stream its stage does not work from, or publish another stage's
output. `jetl up` generates the passwords on first start and keeps them, owner-only, in its data folder
(`Credentials`).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, SecretStr

from jetl import subjects
from jetl.subjects import CONSUMERS, DURABLE_ROLE, ROLES, SERVICE_ROLES, Kind, Role, StateKey, state_keys

__all__ = ["ROLES", "SERVICE_ROLES", "Credentials", "Permissions", "Role", "permissions"]

# What each service publishes besides its events and log lines.
_OUTPUTS: dict[Role, tuple[str, ...]] = {
    "extractor": (subjects.pattern(Kind.RAW), subjects.partition_pattern(), subjects.dlq_of("extract")),
    "transformer": (subjects.pattern(Kind.CLEAN), subjects.dlq_of("transform")),
    "loader": (subjects.dlq_of("load"),),
    # run requests; the watchdog dead-letters a batch of any stage that reached max_deliver
    "scheduler": (subjects.pattern(Kind.RUN), subjects.dlq_of("*")),
}
# The streams whose messages each service reads one by one (besides its durables).
_READS: dict[Role, tuple[Kind, ...]] = {
    "extractor": (Kind.RAW, Kind.DLQ),  # replays read the parent's raw batches, redrives their dead letters
    "transformer": (),
    "loader": (),
    "scheduler": (Kind.RUN, Kind.RAW, Kind.CLEAN),  # the watchdog reads the message no stage could finish
}
_DURABLES: dict[Role, tuple[str, ...]] = {
    role: tuple(d for d, r in DURABLE_ROLE.items() if r == role) for role in SERVICE_ROLES
}
# The state bucket's keys each service writes (`jetl.state`): its own heartbeats, and the scheduler, which folds the
# log, run state, cursors and its indexes. The extractor enters a run it takes in the unfinished index itself (its
# overlap guard is its own decision).
_STATE_WRITES: dict[Role, tuple[str, ...]] = {
    "extractor": (state_keys(StateKey.ACTIVE),),
    "transformer": (),
    "loader": (),
    "scheduler": tuple(
        state_keys(k)
        for k in (
            StateKey.RUN,
            StateKey.BATCH,
            StateKey.CURSOR,
            StateKey.ACTIVE,
            StateKey.OK,
            StateKey.FAILED,
            StateKey.SCHED,
            StateKey.ALERT,
            StateKey.SHARD,
        )
    ),
}


@dataclass(frozen=True)
class Permissions:
    """Subjects one user may publish to and subscribe to (NATS allow lists; anything else is denied), and whether it
    may answer a request it received (`allow_responses`: one reply to the request's own reply subject)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False

    def as_config(self) -> dict[str, object]:
        """The `permissions` block of a nats-server user."""
        block: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            block["allow_responses"] = True
        return block


def _consumed(role: Role) -> list[tuple[Kind, str]]:
    """The (stream kind, consumer name) pairs `role` pulls from: a stream with a per-pipeline durable of the role's
    is granted by wildcard once (`subjects.durable_names`: the role alone consumes it), covering its shared ones."""
    wild = {CONSUMERS[d] for d in _DURABLES[role] if subjects.durable_names(d) == subjects.ANY}
    out = [(kind, subjects.ANY) for kind in dict.fromkeys(CONSUMERS[d] for d in _DURABLES[role]) if kind in wild]
    return out + [(CONSUMERS[d], d) for d in _DURABLES[role] if CONSUMERS[d] not in wild]


def permissions(role: Role) -> Permissions:
    """The permissions of one role, from the subject builder."""
    if role == "operator":
        return Permissions(publish=(subjects.ALL,), subscribe=(subjects.ALL,))
    publish = [
        subjects.events_by(role),
        subjects.pattern(Kind.LOGS),
        *_OUTPUTS[role],
        *subjects.kv_write_access(subjects.STATE_BUCKET, [state_keys(StateKey.SVC, role, "*"), *_STATE_WRITES[role]]),
        *subjects.kv_read_access(subjects.STATE_BUCKET),
        *subjects.js_info_access(),
    ]
    for kind in _READS[role]:
        publish.extend(subjects.stream_read_access(subjects.stream_name(kind)))
    # every service dead-letters, and keeps a body too large for a message in the bodies bucket (the extractor
    # reads them back for a redrive)
    publish.extend(subjects.object_store_access(subjects.DLQ_BODIES_BUCKET))
    for kind, name in _consumed(role):
        publish.extend(subjects.js_consume_access(kind, name))
    if role == "extractor":  # a run starts only once its pipeline's consumers exist (`jetl_extractor.handlers`)
        publish.extend(subjects.consumer_info_access(CONSUMERS[d], subjects.ANY) for d in sorted(subjects.PER_PIPELINE))
    subscribe = [subjects.inbox(role), subjects.control_pattern(role)]
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe), allow_responses=True)


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
