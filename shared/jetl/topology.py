"""The topology jetl declares on NATS: its streams, the durable consumers, the run-state KV bucket, and `declare`,
which creates or updates them idempotently. Only `jetl deploy` and `jetl up` declare (as the operator user: service
users may not administer JetStream); everything else checks that the deployment exists (`require_deployment`), and a
service waits for it (`wait_for_deployment`), so no command plants streams on a server it was wrongly pointed at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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
)
from nats.js.errors import NotFoundError

from jetl import subjects
from jetl.errors import NoDeployment
from jetl.logging import get_logger
from jetl.redact import redact_url
from jetl.settings import NatsSettings
from jetl.subjects import CONSUMERS, STREAMS, Discard, Kind, Retention

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
    return StreamConfig(
        name=spec.name,
        subjects=spec.subjects,
        retention=_RETENTION[spec.retention],
        max_age=spec.max_age_days * 86400,
        duplicate_window=spec.duplicate_window_s,
        max_bytes=(max_bytes or {}).get(kind.value, spec.max_bytes),
        discard=DiscardPolicy.NEW if spec.discard is Discard.NEW else DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


def consumer_config(service: str, ack_wait: float = ACK_WAIT_S) -> ConsumerConfig:
    """The durable pull consumer that all replicas of `service` share (`ack_wait`: NatsSettings.ack_wait)."""
    kind = CONSUMERS[service]
    return ConsumerConfig(
        durable_name=service,
        filter_subject=subjects.pattern(kind),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=MAX_DELIVER,
        max_ack_pending=MAX_ACK_PENDING,
    )


@dataclass
class Change:
    """One thing `declare()` did or would do."""

    what: str
    name: str
    action: str  # created | updated | unchanged | differs
    detail: str = ""


_COMPARED = ("subjects", "retention", "max_age", "duplicate_window", "max_bytes", "discard", "num_replicas", "storage")
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


async def declare(nc: Client, s: NatsSettings, *, dry_run: bool = False) -> list[Change]:
    """Create or update every stream and consumer; idempotent. Returns what changed (or would)."""
    js = nc.jetstream()
    changes: list[Change] = []
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
    for service, kind in CONSUMERS.items():
        wanted_c = consumer_config(service, s.ack_wait)
        stream = STREAMS[kind].name
        try:
            cinfo = await js.consumer_info(stream, service)
        except NotFoundError:
            if not dry_run:
                await js.add_consumer(stream, wanted_c)
            changes.append(Change("consumer", f"{stream}/{service}", "created"))
            continue
        diffs = _diff(cinfo.config, wanted_c, _COMPARED_CONSUMER)
        if not diffs:
            changes.append(Change("consumer", f"{stream}/{service}", "unchanged"))
            continue
        if not dry_run:
            try:
                await js.add_consumer(stream, wanted_c)  # add with the same durable name updates it
            except Exception as exc:  # some fields (ack policy) cannot change on a live consumer
                detail = f"{'; '.join(diffs)} (update refused: {exc})"
                changes.append(Change("consumer", f"{stream}/{service}", "differs", detail))
                continue
        changes.append(Change("consumer", f"{stream}/{service}", "updated", "; ".join(diffs)))
    changes.append(await _declare_kv(js, s, dry_run=dry_run))
    changes.append(await _declare_object_store(js, s, dry_run=dry_run))
    return changes


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


STATE_MAX_BYTES = NatsSettings().state_max_bytes


def kv_config(replicas: int = 1, max_bytes: int = STATE_MAX_BYTES) -> KeyValueConfig:
    """The declared configuration of the state bucket (`jetl deploy` keeps it so). No bucket-wide TTL: cursors must
    never expire, so run and batch keys carry their own (`jetl.state`, `NatsSettings.run_state_ttl_days`)."""
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
    """Raise NoDeployment unless every jetl stream and the state bucket exist on the server `nc` is connected to.

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
        except TimeoutError as exc:
            last = exc
        except Exception as exc:  # not found, no JetStream (no responders): either way, nothing of jetl's here
            raise NoDeployment(server_url(nc, url)) from exc
    raise NoDeployment(server_url(nc, url)) from last


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
        except NoDeployment:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            if not told:
                shown = redact_url(server_url(nc, url))
                get_logger("jetl.topology").info(f"waiting for jetl deployment at {shown}", timeout_s=timeout)
                told = True
            await asyncio.sleep(every)
