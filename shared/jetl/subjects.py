"""The one place that knows NATS subject and stream names.

Every subject jetl publishes or subscribes to is built here; no other module spells a subject string.

| stream      | subjects                      | retention  | full: discard |
|-------------|-------------------------------|------------|---------------|
| JETL_RUNS   | jetl.run.<pipeline>           | work queue | new           | (and jetl.run.<pipeline>.<run>.<partition>)
| JETL_RAW    | jetl.raw.<pipeline>.<run>     | interest   | new           | (a batch goes once transformed + archived)
| JETL_CLEAN  | jetl.clean.<pipeline>.<run>   | interest   | new           | (a batch goes once the loader acked it)
| JETL_EVENTS | jetl.events.<pipeline>.<run>.<role> | limits | old         | (the role that said it: `Role`; stored
|             |   with a shard token appended, `.<k>`, by the stream's subject transform: `tracker_shard`)
| JETL_DLQ    | jetl.dlq.<pipeline>.<stage>   | limits     | new           |
| JETL_LOGS   | jetl.logs.<pipeline>.<run>    | limits     | old           |
| JETL_ADVISORIES | $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.*.* | limits | old | (the server's, for the watchdog)
| (none)      | jetl.ctl.<service>.<verb>     | request/reply to a running service |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from jetl.errors import ConfigError

PREFIX = "jetl"
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")

Stage = Literal["extract", "transform", "load"]

Role = Literal["extractor", "transformer", "loader", "scheduler", "operator"]
"""Who may do what on the bus: one NATS user per service, and the operator (the CLI, `jetl deploy`, the dashboard).
An event's subject ends with the role that published it, which NATS permissions hold each user to."""
ROLES: tuple[Role, ...] = ("extractor", "transformer", "loader", "scheduler", "operator")
SERVICE_ROLES: tuple[Role, ...] = ("extractor", "transformer", "loader", "scheduler")
STAGE_ROLE: dict[str, Role] = {"extract": "extractor", "transform": "transformer", "load": "loader"}
"""The role whose work each stage is (its dead letters and its events)."""


class Kind(StrEnum):
    """The kinds of traffic; each has one stream."""

    RUN = "run"
    RAW = "raw"
    CLEAN = "clean"
    EVENTS = "events"
    DLQ = "dlq"
    LOGS = "logs"
    ADVISORY = "advisory"
    """JetStream's max-deliveries advisories, which the server publishes (not jetl): kept so that a scheduler started
    after one was sent still fails its run (`jetl_scheduler.watchdog`)."""


class Retention(StrEnum):
    """Stream retention policy, as JetStream names it."""

    LIMITS = "limits"
    WORK_QUEUE = "workqueue"
    INTEREST = "interest"


class Discard(StrEnum):
    """What a full stream does, as JetStream names it: refuse the new message, or drop the oldest."""

    NEW = "new"
    OLD = "old"


MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class StreamSpec:
    """What `jetl deploy` declares for one stream."""

    name: str
    kind: Kind
    retention: Retention
    max_age_days: float
    duplicate_window_s: float
    max_bytes: int
    """The stream's byte limit (`NatsSettings.stream_max_bytes` overrides it per kind)."""
    discard: Discard
    """What happens at the limit. NEW where a message is work not yet done (the publisher gets an error and retries
    or naks its input: nothing is dropped in silence); OLD where the oldest message is history nobody waits on."""

    @property
    def subjects(self) -> list[str]:
        """The subject filter that the stream captures."""
        return [pattern(self.kind)]


STREAMS: dict[Kind, StreamSpec] = {
    Kind.RUN: StreamSpec("JETL_RUNS", Kind.RUN, Retention.WORK_QUEUE, 7, 24 * 3600, 64 * MiB, Discard.NEW),
    # A window, not the history: a raw batch is kept until the transformer and the archiver have both acked it (the
    # archiver after writing it to the archive, `jetl.archive`), so the stream holds only work not yet done, and
    # when full it refuses new batches (the extractor pauses, `jetl.bus.Bus`) until they drain: it never drops one
    # that is not yet transformed or archived. Replays read what left it from the archive.
    Kind.RAW: StreamSpec("JETL_RAW", Kind.RAW, Retention.INTEREST, 7, 3600, 3 * GiB, Discard.NEW),
    # A clean batch is kept until the loader's durable consumer acks it, not two days after: at 49 bytes a record,
    # kept clean batches were most of nats-server's memory and disk on a long input. Nothing reads them afterwards
    # (replay re-transforms from JETL_RAW); max_age still bounds a batch no loader ever acks.
    Kind.CLEAN: StreamSpec("JETL_CLEAN", Kind.CLEAN, Retention.INTEREST, 2, 3600, 2 * GiB, Discard.NEW),
    Kind.EVENTS: StreamSpec("JETL_EVENTS", Kind.EVENTS, Retention.LIMITS, 365, 3600, 1 * GiB, Discard.OLD),
    Kind.DLQ: StreamSpec("JETL_DLQ", Kind.DLQ, Retention.LIMITS, 30, 3600, 1 * GiB, Discard.NEW),
    Kind.LOGS: StreamSpec("JETL_LOGS", Kind.LOGS, Retention.LIMITS, 14, 120, 512 * MiB, Discard.OLD),
    # Core NATS advisories are fire and forget: captured in a stream, one sent while no scheduler ran is still there
    # for the next one to act on. Few and small; the oldest goes first (each is acted on once, by the watchdog).
    Kind.ADVISORY: StreamSpec("JETL_ADVISORIES", Kind.ADVISORY, Retention.LIMITS, 7, 120, 16 * MiB, Discard.OLD),
}

TRACKER_SHARDS = 8
"""Shards of the run tracker's fold. JETL_EVENTS stores each event with a shard token appended, a hash of its
pipeline and run (the stream's subject transform, `{{partition(8,1,2)}}`: every event of a run in one shard, in log
order), and each shard has its own durable, `tracker-<k>`, which one scheduler replica at a time pulls from (it holds
the shard's lease, `jetl_scheduler.shards`): two replicas never fold the same run. Eight lets up to eight replicas
share the fold; changing it re-partitions the runs in flight (deploy when the log is drained)."""


def tracker_shard(k: int) -> str:
    """The durable of the tracker's shard `k` (`tracker-<k>`)."""
    if not 0 <= k < TRACKER_SHARDS:
        raise ConfigError(f"tracker shard {k} is not one of 0..{TRACKER_SHARDS - 1}")
    return f"tracker-{k}"


TRACKER_DURABLES: tuple[str, ...] = tuple(tracker_shard(k) for k in range(TRACKER_SHARDS))
"""Every shard durable of the tracker, in shard order."""

# The durable consumer each service binds to; N replicas of a service share it (the tracker's shards: one replica
# each at a time).
CONSUMERS: dict[str, Kind] = {
    "extractor": Kind.RUN,
    "transformer": Kind.RAW,
    "archiver": Kind.RAW,  # writes each raw batch to the archive before it may leave JETL_RAW (the transformer runs it)
    "loader": Kind.CLEAN,
    **dict.fromkeys(TRACKER_DURABLES, Kind.EVENTS),
    "watchdog": Kind.ADVISORY,
}


DURABLE_ROLE: dict[str, Role] = {
    "extractor": "extractor",
    "transformer": "transformer",
    "archiver": "transformer",
    "loader": "loader",
    **dict.fromkeys(TRACKER_DURABLES, "scheduler"),
    "watchdog": "scheduler",
}
"""The role whose service binds each durable consumer."""

PER_PIPELINE: frozenset[str] = frozenset({"transformer", "loader"})
"""Durables declared once per pipeline, `<durable>-<pipeline>` (`stage_durable`), never shared by all pipelines: a
service pulls from each of its pipelines' durables in turn, so a small run's batches do not wait behind every batch
a big run of another pipeline put on the stream before them (docs/architecture.md, "Pipelines that do not wait
behind each other"). The others stay shared: the extractor's run slots already take several runs at once, the
archiver's and the tracker's work is short per message, and the watchdog's is rare."""


def stage_durable(durable: str, pipeline: str) -> str:
    """The name of `durable`'s consumer for one pipeline (`transformer-orders`); `durable` itself when it is shared."""
    if durable not in PER_PIPELINE:
        return durable
    return f"{durable}-{check_token(pipeline, 'pipeline')}"


def durable_of(consumer: str) -> str | None:
    """The durable (a key of `CONSUMERS`) a consumer name belongs to: itself, or the `<durable>-` prefix of a
    per-pipeline one; None for a consumer that is not jetl's (an operator's ephemeral reader)."""
    if consumer in CONSUMERS:
        return consumer
    head, sep, _ = consumer.partition("-")
    return head if sep and head in PER_PIPELINE else None


def durable_names(durable: str) -> str:
    """A NATS wildcard over every consumer name of `durable`, for its grants: a per-pipeline durable's stream is
    consumed by its role alone, so `*` names its consumers (NATS wildcards match whole tokens: `transformer-*`
    cannot be spelled)."""
    return ANY if durable in PER_PIPELINE else durable


def role(name: str) -> Role:
    """`name` as a role (a service's name is its role); ConfigError for anything else."""
    for r in ROLES:
        if r == name:
            return r
    raise ConfigError(f"{name!r} is not a jetl role: one of {', '.join(ROLES)}")


def check_token(value: str, what: str = "name") -> str:
    """Return `value` if it is a valid subject token (no dots, spaces, `*` or `>`), else raise ConfigError."""
    if not _TOKEN.match(value):
        raise ConfigError(f"{what} {value!r} is not a valid subject token: use letters, digits, '_' and '-' only")
    return value


def stream_name(kind: Kind) -> str:
    """The stream that holds `kind` traffic."""
    return STREAMS[kind].name


def run_request(pipeline: str) -> str:
    """Subject of run requests for a pipeline."""
    return f"{PREFIX}.run.{check_token(pipeline, 'pipeline')}"


def run_partition(pipeline: str, run_id: str, partition: str) -> str:
    """Subject of one partition of a run's extraction: any extractor replica takes it (same stream and durable as
    run requests, which `jetl.run.>` covers; the extra tokens tell it apart from a run request)."""
    return f"{_per_run('run', pipeline, run_id)}.{check_token(partition, 'partition')}"


def partition_pattern() -> str:
    """Every partition subject (`jetl.run.*.*.*`), and no run request: what an extractor may publish on JETL_RUNS."""
    return f"{PREFIX}.{Kind.RUN.value}.*.*.*"


def is_partition(subject: str) -> bool:
    """Whether a JETL_RUNS subject is a partition work item rather than a run request."""
    return subject.count(".") == 4


def _per_run(kind: str, pipeline: str, run_id: str) -> str:
    """`jetl.<kind>.<pipeline>.<run id>`, both tokens checked."""
    return f"{PREFIX}.{kind}.{check_token(pipeline, 'pipeline')}.{check_token(run_id, 'run id')}"


def raw(pipeline: str, run_id: str) -> str:
    """Subject of a run's extracted batches."""
    return _per_run("raw", pipeline, run_id)


def clean(pipeline: str, run_id: str) -> str:
    """Subject of a run's transformed batches."""
    return _per_run("clean", pipeline, run_id)


def events(pipeline: str, run_id: str, role: Role) -> str:
    """Subject of a run's lifecycle events said by `role`: `jetl.events.<pipeline>.<run>.<role>`. Each user may
    publish only under its own role, so the role token is who said it (the tracker trusts each event type only from
    the roles whose work it is: `jetl.events.trusted`)."""
    if role not in ROLES:
        raise ConfigError(f"{role!r} is not a jetl role")
    return f"{_per_run('events', pipeline, run_id)}.{role}"


def events_by(role: Role) -> str:
    """Every event subject of one role (`jetl.events.*.*.<role>`): what that role may publish."""
    return f"{PREFIX}.{Kind.EVENTS.value}.*.*.{role}"


def event_role(subject: str) -> str | None:
    """The role an event subject names (its fifth token: as published, or as stored with its shard token after it),
    None for a subject that is no event subject."""
    parts = subject.split(".")
    if len(parts) not in (5, 6) or parts[0] != PREFIX or parts[1] != Kind.EVENTS.value or parts[4] not in ROLES:
        return None
    return parts[4]


def events_transform() -> tuple[str, str]:
    """JETL_EVENTS's subject transform (source, destination): each event is stored with its tracker shard appended,
    `jetl.events.<pipeline>.<run>.<role>.<k>`, k a hash of the pipeline and run tokens (nats-server 2.10+)."""
    events_of = f"{PREFIX}.{Kind.EVENTS.value}"
    dest = f"{events_of}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"
    return f"{events_of}.*.*.*", f"{dest}.{{{{partition({TRACKER_SHARDS},1,2)}}}}"


def consumer_filter(durable: str, pipeline: str | None = None) -> str:
    """The filter subject of a durable: a tracker shard's stored events (`jetl.events.*.*.*.<k>`), a per-pipeline
    durable's pipeline's subjects, or its whole stream's."""
    if durable in TRACKER_DURABLES:
        return f"{PREFIX}.{Kind.EVENTS.value}.*.*.*.{TRACKER_DURABLES.index(durable)}"
    kind = CONSUMERS[durable]
    return pattern(kind, pipeline if durable in PER_PIPELINE else None)


def dlq(pipeline: str, stage: Stage) -> str:
    """Subject of a pipeline's dead letters from one stage."""
    return f"{PREFIX}.dlq.{check_token(pipeline, 'pipeline')}.{stage}"


def dlq_of(stage: Stage | Literal["*"]) -> str:
    """Every pipeline's dead letters of one stage (`jetl.dlq.*.<stage>`): what that stage's role may publish."""
    return f"{PREFIX}.dlq.*.{stage}"


def logs(pipeline: str, run_id: str) -> str:
    """Subject of one run's shipped log lines."""
    return _per_run("logs", pipeline, run_id)


def control(service: str, verb: str) -> str:
    """Core-NATS request/reply subject a service answers (no stream): e.g. the loader's destination queries."""
    return f"{PREFIX}.ctl.{check_token(service, 'service')}.{check_token(verb, 'verb')}"


def pattern(kind: Kind, pipeline: str | None = None, run_id: str | None = None, *, role: Role | None = None) -> str:
    """A wildcard filter over `kind` subjects, narrowed to a pipeline and run when given.

    A run id without a pipeline matches that run under any pipeline (`jetl.logs.*.<run>`). Event filters match
    every role's events (`jetl.events.<pipeline>.<run>.>`: as published, and as JETL_EVENTS stores them, with their
    tracker shard appended), or one `role`'s as stored (`jetl.events.<pipeline>.<run>.<role>.*`).
    """
    if kind is Kind.ADVISORY:  # the server's subject, not jetl's: every stream and consumer (the watchdog filters)
        return max_deliveries_advisory()
    parts = [PREFIX, kind.value]
    by = ([role, ANY] if role else [">"]) if kind is Kind.EVENTS else []
    if pipeline is None:
        if run_id is not None and kind is not Kind.RUN:
            return ".".join([*parts, ANY, check_token(run_id, "run id"), *by])
        return ".".join([*parts, ">"])
    parts.append(check_token(pipeline, "pipeline"))
    if kind is Kind.RUN:
        return ".".join(parts)
    parts.append(check_token(run_id, "run id") if run_id is not None else ANY)
    return ".".join([*parts, *by])


ANY = "*"
"""One token of any value, in a subject filter."""


_PER_RUN = {Kind.RUN.value, Kind.RAW.value, Kind.CLEAN.value, Kind.EVENTS.value, Kind.LOGS.value}


def metric_label(subject: str) -> str:
    """A subject cut down to its kind and pipeline for a metric label (`jetl.raw.<pipeline>`): never a run id (nor a
    partition's work item, `jetl.run.<pipeline>.<run>.<partition>`), so the label set stays bounded. Dead letters
    and control subjects keep their tokens (pipeline and stage, service and verb: bounded sets); NATS's own
    subjects (`_INBOX.<random>`, `$JS.API...`) keep their root."""
    parts = subject.split(".")
    if parts[0] != PREFIX or len(parts) < 3:
        return parts[0]
    return ".".join(parts[:3] if parts[1] in _PER_RUN else parts[:4])


def control_pattern(service: str) -> str:
    """Every control verb of one service (`jetl.ctl.<service>.>`): what that service may answer."""
    return f"{PREFIX}.ctl.{check_token(service, 'service')}.>"


# JetStream's own subjects, for the per-role permissions (`jetl.access`): a service reads stream info, reads the
# messages of the streams its stage works from one by one (`$JS.API.STREAM.MSG.GET`: no consumer of its own, so no
# push delivery anywhere), reads the state bucket and writes only its own key prefixes, and pulls from and acks its
# own durable consumer; stream and consumer administration are not listed.
ALL = ">"
INBOX_ROOT = "_INBOX"
"""NATS's default reply-inbox prefix; jetl's roles each get their own under it (`inbox_prefix`)."""
STATE_BUCKET = "JETL_STATE"
DLQ_BODIES_BUCKET = "JETL_DLQ_BODIES"
"""The object-store bucket that keeps what is too large to travel in a message (a record over `max_payload`, a
dead letter of a whole batch): the dead letter on JETL_DLQ names it by reference (`body_ref`)."""
_JS = "$JS.API"
_ADVISORY = "$JS.EVENT.ADVISORY"


def inbox_prefix(user: str | None) -> str:
    """The prefix of a client's reply inboxes: `_INBOX.<role>` for a user named as a jetl role, whose permissions
    let it hear its own replies and no one else's; NATS's default `_INBOX` for any other user (an operator's
    inboxes under it are heard by nobody but the operator)."""
    return f"{INBOX_ROOT}.{user}" if user in ROLES else INBOX_ROOT


def inbox(role: Role) -> str:
    """Every reply inbox of one role (`_INBOX.<role>.>`): the only inboxes that role may subscribe to."""
    return f"{inbox_prefix(role)}.>"


class StateKey(StrEnum):
    """The key prefixes of the state bucket (`jetl.state`): write permissions are granted by prefix."""

    RUN = "run"
    BATCH = "batch"
    CURSOR = "cursor"
    SCHED = "sched"
    PAUSE = "pause"
    ACTIVE = "active"
    OK = "ok"
    FAILED = "failed"
    SVC = "svc"
    ALERT = "alert"
    SHARD = "shard"
    """`shard.<k>`: which scheduler replica folds the tracker's shard k (a lease, `jetl_scheduler.shards`)."""


def state_keys(prefix: StateKey, *tokens: str) -> str:
    """The key filter `<prefix>.<tokens>...` (no tokens: every key under the prefix, `<prefix>.>`)."""
    return ".".join([prefix.value, *tokens] if tokens else [prefix.value, ">"])


def max_deliveries_advisory(stream: str = "*", consumer: str = "*") -> str:
    """JetStream's advisory that a message of `stream` reached `max_deliver` on `consumer` without an ack (wildcards
    by default: every stream and consumer)."""
    return f"{_ADVISORY}.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


def object_store_access(bucket: str) -> list[str]:
    """What putting objects into one object-store bucket, and reading them back without a consumer, publishes to:
    chunks and meta, and the bucket stream's messages one by one (its meta by subject, `jetl.bus.Bus.fetch`)."""
    return [f"$O.{bucket}.>", *stream_read_access(f"OBJ_{bucket}")]


def object_chunks(bucket: str, nuid: str) -> str:
    """The subject of one object's chunks in an object-store bucket (nats-py's layout)."""
    return f"$O.{bucket}.C.{nuid}"


def kv_read_access(bucket: str) -> list[str]:
    """What reading the keys of one KV bucket publishes to."""
    return [f"{_JS}.DIRECT.GET.KV_{bucket}.>", f"{_JS}.DIRECT.GET.KV_{bucket}", *stream_read_access(f"KV_{bucket}")]


def kv_write_access(bucket: str, keys: list[str]) -> list[str]:
    """What writing (and deleting) the keys of one KV bucket that match `keys` (filters) publishes to."""
    return [f"$KV.{bucket}.{k}" for k in keys]


def js_info_access() -> list[str]:
    """Reading stream and account info (what `require_deployment` and the bucket lookups need): metadata, no
    message."""
    return [f"{_JS}.INFO", f"{_JS}.STREAM.INFO.*"]


def stream_read_access(stream: str) -> list[str]:
    """Reading one stream's messages one at a time, by sequence or next by subject: no consumer is created."""
    return [f"{_JS}.STREAM.MSG.GET.{stream}"]


def consumer_info_access(kind: Kind, durable: str) -> str:
    """What reading one durable consumer's info (whether it exists, its lag) publishes to."""
    return f"{_JS}.CONSUMER.INFO.{stream_name(kind)}.{durable}"


def consumer_next(kind: Kind, durable: str) -> str:
    """Where a pull request for one durable consumer's next messages goes."""
    return f"{_JS}.CONSUMER.MSG.NEXT.{stream_name(kind)}.{durable}"


def js_consume_access(kind: Kind, durable: str) -> list[str]:
    """What pulling from, acking and reading the lag of one durable consumer publishes to."""
    stream = stream_name(kind)
    return [
        consumer_next(kind, durable),
        f"$JS.ACK.{stream}.{durable}.>",
        consumer_info_access(kind, durable),
    ]


_UPPER = {
    "$JS",
    "$KV",
    "$O",
    "API",
    "INFO",
    "STREAM",
    "CONSUMER",
    "CREATE",
    "DURABLE",
    "DELETE",
    "UPDATE",
    "PURGE",
    "NAMES",
    "LIST",
    "MSG",
    "GET",
    "NEXT",
    "DIRECT",
    "ACK",
    "FC",
    "EVENT",
    "ADVISORY",
    "MAX_DELIVERIES",
    "LEADER",
    "M",
    "C",
}


def restore_case(subject: str) -> str:
    """A subject as nats-py reports it in an error (all lower case) spelled as jetl and JetStream spell it: the
    JetStream API's words and jetl's stream and bucket names upper case, jetl's own tokens lower case."""
    names = {spec.name for spec in STREAMS.values()} | {STATE_BUCKET, DLQ_BODIES_BUCKET}
    names |= {f"KV_{STATE_BUCKET}", f"OBJ_{DLQ_BODIES_BUCKET}"}
    if not subject.startswith("$"):
        return subject
    return ".".join(t.upper() if t.upper() in _UPPER or t.upper() in names else t for t in subject.split("."))
