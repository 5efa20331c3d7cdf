"""The topology jetl declares on NATS: its streams, the durable consumers, the run-state KV bucket, and `declare`,
which creates or updates them idempotently. Only `jetl deploy` and `jetl up` declare (as the operator user: service
users may not administer JetStream); everything else checks that the deployment exists (`require_deployment`), and a
service waits for it (`wait_for_deployment`), so no command plants streams on a server it was wrongly pointed at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import NotFoundError, ServiceUnavailableError

from jetl import subjects
from jetl.errors import NoDeployment, TransientError
from jetl.redact import redact_url
from jetl.subjects import CONSUMERS, STREAMS, Discard, Kind, Retention

if TYPE_CHECKING:
    from jetl.connection import NatsSettings

# Consumer tuning: a stage must ack within ACK_WAIT or call in_progress(); after MAX_DELIVER tries a message
# is dead-lettered by the stage itself (see jetl.runtime.stage). The ack wait is short because it is how long a
# crashed worker's messages wait before JetStream hands them to a live one (a SIGKILLed loader stalled runs for the
# ack wait, 60 s, before it was cut to 10 s); live workers beat in_progress() every third of it
# (jetl.runtime.service.keep_alive), so a long batch is never redelivered while its worker lives.
ACK_WAIT_S = 10.0
MAX_DELIVER = 5
MAX_ACK_PENDING = 256
EPHEMERAL_INACTIVE_S = 5.0
"""Seconds an ephemeral consumer (an operator's read of the log) outlives its reader: one left behind by a reader
that died cannot pin JETL_CLEAN (interest retention) or hold server memory for long. Only the operator creates
them; services create no consumer at all (`jetl.access`)."""
UNLIMITED = -1
MAX_DELIVER_OF = {"archiver": UNLIMITED}
"""Durables that never give up on a message: a batch the archiver cannot write yet (the archive is full or away) is
tried again until it can, since JETL_RAW keeps it until then; dead-lettering it would lose nothing but its history."""


_RETENTION = {
    Retention.LIMITS: RetentionPolicy.LIMITS,
    Retention.WORK_QUEUE: RetentionPolicy.WORK_QUEUE,
    Retention.INTEREST: RetentionPolicy.INTEREST,
}
# Retention changes nats-server makes in place (2.10+): JETL_CLEAN deployed under limits moves to interest.
_RETENTION_UPDATES = {
    (RetentionPolicy.LIMITS, RetentionPolicy.INTEREST),
    (RetentionPolicy.INTEREST, RetentionPolicy.LIMITS),
}


def stream_config(kind: Kind, replicas: int = 1, max_bytes: dict[str, int] | None = None) -> StreamConfig:
    """The declared configuration of one stream (`max_bytes`: NatsSettings.stream_max_bytes, by kind)."""
    spec = STREAMS[kind]
    transform = None
    if kind is Kind.EVENTS:  # every event stored with its tracker shard appended (`subjects.events_transform`)
        src, dest = subjects.events_transform()
        transform = SubjectTransform(src=src, dest=dest)
    return StreamConfig(
        name=spec.name,
        subjects=spec.subjects,
        subject_transform=transform,
        retention=_RETENTION[spec.retention],
        max_age=spec.max_age_days * 86400,
        duplicate_window=spec.duplicate_window_s,
        max_bytes=(max_bytes or {}).get(kind.value, spec.max_bytes),
        discard=DiscardPolicy.NEW if spec.discard is Discard.NEW else DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


def consumer_config(service: str, ack_wait: float = ACK_WAIT_S, pipeline: str | None = None) -> ConsumerConfig:
    """The durable pull consumer that all replicas of `service` share (`ack_wait`: NatsSettings.ack_wait); for a
    per-pipeline durable (`subjects.PER_PIPELINE`), `pipeline`'s, filtered on that pipeline's subjects."""
    return ConsumerConfig(
        durable_name=subjects.stage_durable(service, pipeline) if pipeline is not None else service,
        filter_subject=subjects.consumer_filter(service, pipeline),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=MAX_DELIVER_OF.get(service, MAX_DELIVER),
        max_ack_pending=MAX_ACK_PENDING,
    )


@dataclass
class Change:
    """One thing `declare()` did or would do."""

    what: str
    name: str
    action: str  # created | updated | unchanged | differs
    detail: str = ""


_COMPARED = (
    "subjects",
    "subject_transform",
    "retention",
    "max_age",
    "duplicate_window",
    "max_bytes",
    "discard",
    "num_replicas",
    "storage",
)
_COMPARED_CONSUMER = ("filter_subject", "ack_policy", "ack_wait", "max_deliver", "max_ack_pending")


_KEEP_REPLICAS = (
    " (kept: a process configured with fewer replicas never shrinks a clustered stream; set"
    " JETL_NATS__STREAM_REPLICAS to the cluster's value)"
)


def _fewer_replicas(current: int | None, wanted: int | None) -> bool:
    """Declaring fewer replicas than a stream has: a client that forgot JETL_NATS__STREAM_REPLICAS=3 on a cluster,
    not a decision to give up redundancy, so it is reported as drift and left alone."""
    return (wanted or 1) < (current or 1)


def _diff(current: Any, wanted: Any, fields: Iterable[str]) -> list[str]:
    out = []
    for f in fields:
        a, b = getattr(current, f, None), getattr(wanted, f, None)
        if a != b:
            out.append(f"{f}: {getattr(a, 'value', a)} -> {getattr(b, 'value', b)}")
    return out


def _durables(pipelines: Iterable[str]) -> list[tuple[str, Kind, str | None]]:
    """Every durable to declare: (durable, stream kind, pipeline or None for a shared one)."""
    names = sorted(set(pipelines))
    out: list[tuple[str, Kind, str | None]] = []
    for service, kind in CONSUMERS.items():
        if service in subjects.PER_PIPELINE:
            out.extend((service, kind, p) for p in names)
        else:
            out.append((service, kind, None))
    return out


async def declare(
    nc: Client, s: NatsSettings, *, pipelines: Iterable[str] | None = None, dry_run: bool = False
) -> list[Change]:
    """Create or update every stream and consumer; idempotent. Returns what changed (or would).

    `pipelines` (default: the pipelines this process registered) get their per-pipeline durables
    (`subjects.PER_PIPELINE`); a pipeline added later gets them at the next deploy (`jetl deploy`, `jetl up`), and
    durables of a pipeline no longer named are left alone (its unfinished runs keep draining). A shared durable of
    a per-pipeline kind left by an older deployment is deleted: it would keep JETL_CLEAN's messages for ever
    (interest retention) and take a share of JETL_RAW's.

    The durables of a stream that exists are declared before the stream is updated: JETL_RAW deployed under limits
    moves to interest retention, and a batch every durable then defined had acked would go at once, before the new
    `archiver` durable could archive it.
    """
    js = nc.jetstream()
    changes: list[Change] = []
    early: set[str] = set()
    if pipelines is None:
        from jetl.registry import get_pipeline_registry

        pipelines = list(get_pipeline_registry())
    durables = _durables(pipelines)
    floors = await _shared_floors(js)
    for service, kind, pipeline in durables:
        try:
            await js.stream_info(STREAMS[kind].name)
        except NotFoundError:
            continue
        early.add(subjects.stage_durable(service, pipeline or ""))
        changes.append(await _declare_consumer(js, service, kind, s, pipeline, floors, dry_run=dry_run))
    for kind in STREAMS:
        wanted = stream_config(kind, s.stream_replicas, s.stream_max_bytes)
        assert wanted.name is not None
        try:
            info = await js.stream_info(wanted.name)
        except NotFoundError:
            if not dry_run:
                await js.add_stream(wanted)
            changes.append(Change("stream", wanted.name, "created"))
            continue
        diffs = _diff(info.config, wanted, _COMPARED)
        if not diffs:
            changes.append(Change("stream", wanted.name, "unchanged"))
            continue
        fixed = (info.config.retention, wanted.retention) not in _RETENTION_UPDATES
        if any(d.startswith("storage") or (d.startswith("retention") and fixed) for d in diffs):
            changes.append(Change("stream", wanted.name, "differs", "; ".join(diffs) + " (cannot be changed in place)"))
            continue
        if _fewer_replicas(info.config.num_replicas, wanted.num_replicas):
            changes.append(Change("stream", wanted.name, "differs", "; ".join(diffs) + _KEEP_REPLICAS))
            continue
        if not dry_run:
            try:
                await js.update_stream(wanted)
            except Exception as exc:  # the server refused (e.g. replicas on a single node): report, never hide
                changes.append(Change("stream", wanted.name, "differs", f"{'; '.join(diffs)} (update refused: {exc})"))
                continue
        changes.append(Change("stream", wanted.name, "updated", "; ".join(diffs)))
    for service, kind, pipeline in durables:
        if subjects.stage_durable(service, pipeline or "") not in early:
            changes.append(await _declare_consumer(js, service, kind, s, pipeline, floors, dry_run=dry_run))
    for service in sorted(subjects.PER_PIPELINE):
        changes.extend(await _drop_shared(js, service, STREAMS[CONSUMERS[service]].name, dry_run=dry_run))
    changes.extend(
        await _drop_shared(
            js, "tracker", STREAMS[Kind.EVENTS].name, dry_run=dry_run, why="one folder of every run: sharded now"
        )
    )
    changes.append(await _declare_kv(js, s, dry_run=dry_run))
    changes.append(await _declare_object_store(js, s, dry_run=dry_run))
    return changes


async def _shared_floors(js: Any) -> dict[str, int]:
    """Per per-pipeline durable kind, where a shared durable an older deployment left has acked up to: the new
    per-pipeline durables start after it, so no batch it settled is handed out again and none it had still to take
    is skipped (at most the few it acked out of order come again; the stages' ledgers settle those)."""
    floors: dict[str, int] = {}
    for service in subjects.PER_PIPELINE:
        try:
            info = await js.consumer_info(STREAMS[CONSUMERS[service]].name, service)
        except NotFoundError:
            continue
        floors[service] = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    return floors


async def _drop_shared(
    js: Any, service: str, stream: str, *, dry_run: bool, why: str = "shared by every pipeline: one per pipeline now"
) -> list[Change]:
    """Delete the shared durable `service` that an older deployment declared for every pipeline (or, the tracker's,
    before its fold was sharded: the events it had not folded yet are folded by `jetl status --rebuild`)."""
    try:
        await js.consumer_info(stream, service)
    except NotFoundError:
        return []
    if not dry_run:
        await js.delete_consumer(stream, service)
    return [Change("consumer", f"{stream}/{service}", "deleted", why)]


async def _declare_consumer(
    js: Any,
    service: str,
    kind: Kind,
    s: NatsSettings,
    pipeline: str | None = None,
    floors: dict[str, int] | None = None,
    *,
    dry_run: bool,
) -> Change:
    """One durable: created if missing (a per-pipeline one after its shared predecessor's ack floor), its settings
    kept as declared."""
    wanted = consumer_config(service, s.ack_wait, pipeline)
    durable = wanted.durable_name
    assert durable is not None
    stream = STREAMS[kind].name
    name = f"{stream}/{durable}"
    try:
        cinfo = await js.consumer_info(stream, durable)
    except NotFoundError:
        if pipeline is not None and service in (floors or {}):
            wanted.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            wanted.opt_start_seq = (floors or {})[service] + 1
        if not dry_run:
            await js.add_consumer(stream, wanted)
        return Change("consumer", name, "created")
    diffs = _diff(cinfo.config, wanted, _COMPARED_CONSUMER)
    if not diffs:
        return Change("consumer", name, "unchanged")
    if not dry_run:
        try:
            await js.add_consumer(stream, wanted)  # add with the same durable name updates it
        except Exception as exc:  # some fields (ack policy) cannot change on a live consumer
            return Change("consumer", name, "differs", f"{'; '.join(diffs)} (update refused: {exc})")
    return Change("consumer", name, "updated", "; ".join(diffs))


DLQ_BODIES_MAX_BYTES = 256 * 1024 * 1024
"""Byte limit of the dead-letter bodies bucket: oversized records are rare, and a flood of them must not fill the
disk (past it the server refuses new objects, and the stage naks instead of dropping anything)."""
DLQ_BODIES_TTL_DAYS = 30.0
"""As long as JETL_DLQ keeps the letters that name these bodies."""


def object_store_config(replicas: int = 1) -> ObjectStoreConfig:
    """The declared configuration of the dead-letter bodies bucket (`subjects.DLQ_BODIES_BUCKET`)."""
    return ObjectStoreConfig(
        bucket=subjects.DLQ_BODIES_BUCKET,
        description="jetl: bodies of dead letters too large for a message",
        ttl=DLQ_BODIES_TTL_DAYS * 86400,
        max_bytes=DLQ_BODIES_MAX_BYTES,
        storage=StorageType.FILE,
        replicas=replicas,
    )


async def _declare_object_store(js: Any, s: NatsSettings, *, dry_run: bool) -> Change:
    """The dead-letter bodies bucket: created if missing, its limits kept as declared."""
    wanted = object_store_config(s.stream_replicas)
    name = subjects.DLQ_BODIES_BUCKET
    try:
        info = await js.stream_info(f"OBJ_{name}")
    except NotFoundError:
        if not dry_run:
            await js.create_object_store(name, config=wanted)  # nats-py overwrites config.bucket with this
        return Change("object store", name, "created")
    config = info.config
    target = {"max_age": wanted.ttl, "max_bytes": wanted.max_bytes, "num_replicas": wanted.replicas}
    diffs = [f"{k}: {getattr(config, k)} -> {v}" for k, v in target.items() if getattr(config, k) != v]
    if not diffs:
        return Change("object store", name, "unchanged")
    if _fewer_replicas(config.num_replicas, wanted.replicas):
        return Change("object store", name, "differs", "; ".join(diffs) + _KEEP_REPLICAS)
    if not dry_run:
        config.max_age, config.max_bytes, config.num_replicas = wanted.ttl, wanted.max_bytes, wanted.replicas
        try:
            await js.update_stream(config)
        except Exception as exc:
            return Change("object store", name, "differs", f"{'; '.join(diffs)} (update refused: {exc})")
    return Change("object store", name, "updated", "; ".join(diffs))


_COMPARED_KV = ("max_msgs_per_subject", "storage", "num_replicas", "max_bytes", "allow_msg_ttl")


async def _declare_kv(js: Any, s: NatsSettings, *, dry_run: bool) -> Change:
    """The run-state KV bucket: created if missing, its history, storage, replicas, byte limit and per-key TTLs
    (`allow_msg_ttl`: run, batch and heartbeat keys expire, cursors do not) kept as declared."""
    wanted = kv_config(s.stream_replicas, s.state_max_bytes)
    stream = f"KV_{BUCKET}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        if not dry_run:
            await js.create_key_value(wanted)  # nats-py declares KV streams with allow_msg_ttl
        return Change("kv", BUCKET, "created")
    current = {
        "max_msgs_per_subject": info.config.max_msgs_per_subject,
        "storage": info.config.storage,
        "num_replicas": info.config.num_replicas,
        "max_bytes": info.config.max_bytes,
        "allow_msg_ttl": bool(info.config.allow_msg_ttl),
    }
    target = {
        "max_msgs_per_subject": wanted.history,
        "storage": wanted.storage,
        "num_replicas": wanted.replicas,
        "max_bytes": wanted.max_bytes,
        "allow_msg_ttl": True,
    }
    diffs = [f"{k}: {current[k]} -> {target[k]}" for k in _COMPARED_KV if current[k] != target[k]]
    if not diffs:
        return Change("kv", BUCKET, "unchanged")
    if any(d.startswith("storage") for d in diffs):
        return Change("kv", BUCKET, "differs", "; ".join(diffs) + " (cannot be changed in place)")
    if _fewer_replicas(info.config.num_replicas, wanted.replicas):
        return Change("kv", BUCKET, "differs", "; ".join(diffs) + _KEEP_REPLICAS)
    if not dry_run:
        config = info.config
        config.max_msgs_per_subject, config.num_replicas = wanted.history, wanted.replicas
        config.max_bytes, config.allow_msg_ttl = wanted.max_bytes, True
        try:
            await js.update_stream(config)
        except Exception as exc:
            return Change("kv", BUCKET, "differs", f"{'; '.join(diffs)} (update refused: {exc})")
    return Change("kv", BUCKET, "updated", "; ".join(diffs))


BUCKET = subjects.STATE_BUCKET


def kv_config(replicas: int = 1, max_bytes: int | None = None) -> KeyValueConfig:
    """The declared configuration of the state bucket (`jetl deploy` keeps it so; `max_bytes`: NatsSettings' default
    when not given). No bucket-wide TTL: cursors must never expire, so run and batch keys carry their own
    (`jetl.state`, `NatsSettings.run_state_ttl_days`)."""
    if max_bytes is None:
        max_bytes = NatsSettings().state_max_bytes
    return KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE, replicas=replicas, max_bytes=max_bytes)


DEPLOYMENT_CHECK_S = 1.5
"""Seconds the deployment check may take: a server that does not answer JetStream requests in time has none."""
DEPLOYMENT_SLOW_S = 10.0
"""Seconds a second check may take after the first timed out (a clustered stream electing its leader)."""


def server_url(nc: Client, fallback: str = "") -> str:
    """The URL of the server `nc` is connected to (for messages: pass it through `redact_url`)."""
    url = nc.connected_url
    return url.geturl() if url is not None else fallback


async def require_deployment(nc: Client, url: str = "") -> None:
    """Raise NoDeployment unless every jetl stream and the state bucket exist on the server `nc` is connected to
    (TransientError when the server does not answer in time: that is not an answer).

    Reads stream info only (a service user may), with a short timeout: a server without JetStream, or without jetl's
    streams, is told apart from a working deployment within `DEPLOYMENT_CHECK_S` per stream.
    """
    names = [spec.name for spec in STREAMS.values()] + [f"KV_{BUCKET}"]
    last: Exception | None = None
    # A timeout is asked again, patiently: on a cluster a stream between leaders (a node just died or came back)
    # answers late; a server without JetStream or without jetl's streams answers "no responders" or "not found" at once.
    for timeout in (DEPLOYMENT_CHECK_S, DEPLOYMENT_SLOW_S):
        js = nc.jetstream(timeout=timeout)
        try:
            await asyncio.gather(*(js.stream_info(name) for name in names))
            return
        except (TimeoutError, ServiceUnavailableError) as exc:  # late, or a stream without a leader: no answer yet
            last = exc
        except Exception as exc:  # not found, no JetStream (no responders): either way, nothing of jetl's here
            raise NoDeployment(server_url(nc, url)) from exc
    # no answer is not "nothing here": a loaded cluster just after a node restart answers this slowly
    raise TransientError(
        f"NATS at {redact_url(server_url(nc, url))} did not say within {DEPLOYMENT_SLOW_S:.0f} s whether jetl is "
        f"deployed there ({type(last).__name__}: streams between leaders?); try again"
    ) from last


async def wait_for_deployment(nc: Client, url: str = "", timeout: float = 120.0, every: float = 1.0) -> None:
    """Wait until `jetl deploy` (or `jetl up`) has declared the deployment; NoDeployment after `timeout` seconds.

    A service starts beside its deployment (compose runs `deploy` first, `jetl up` deploys before it starts the
    services), so a short wait is normal and a long one means the service points at the wrong server.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    told = False
    while True:
        try:
            await require_deployment(nc, url)
            return
        except (NoDeployment, TransientError):
            if asyncio.get_running_loop().time() >= deadline:
                raise
            if not told:
                from jetl.logging import get_logger  # late: `jetl status` never needs structlog

                shown = redact_url(server_url(nc, url))
                get_logger("jetl.topology").info(f"waiting for jetl deployment at {shown}", timeout_s=timeout)
                told = True
            await asyncio.sleep(every)
