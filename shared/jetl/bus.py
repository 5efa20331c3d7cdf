"""The message bus: connections, idempotent declaration of streams and consumers, and publishing.

Publishing goes through the FastStream broker (so `TestNatsBroker` can stand in for NATS in unit tests), always
with `Nats-Msg-Id`, so a redelivered input publishes no duplicate output inside the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import nats
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from jetl import subjects
from jetl.events import _Event
from jetl.messages import Batch, DeadLetter, RunRequest, encode_batch
from jetl.settings import NatsSettings
from jetl.subjects import CONSUMERS, STREAMS, Kind, Retention

MSG_ID = "Nats-Msg-Id"

# Consumer tuning: a stage must ack within ACK_WAIT or call in_progress(); after MAX_DELIVER tries a message
# is dead-lettered by the stage itself (see jetl._internal.stage).
ACK_WAIT_S = 60.0
MAX_DELIVER = 5
MAX_ACK_PENDING = 256


def _tls_context(s: NatsSettings) -> ssl.SSLContext | None:
    t = s.tls
    if not (t.ca_file or t.cert_file):
        return None
    ctx = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
    if t.cert_file:
        ctx.load_cert_chain(str(t.cert_file), str(t.key_file) if t.key_file else None)
    return ctx


def connect_options(s: NatsSettings) -> dict[str, Any]:
    """Options shared by nats-py and FastStream's broker: auth (user/password, token, NKey, creds) and TLS."""
    opts: dict[str, Any] = {"servers": s.servers, "connect_timeout": int(max(1, s.connect_timeout))}
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
    opts.update(extra)
    return await nats.connect(**opts)


async def raw_decoder(msg: Any) -> Any:
    """Leave bodies as bytes: a stage decodes (and validates) a whole batch itself, once."""
    return msg.body


def make_broker(s: NatsSettings, **extra: Any) -> NatsBroker:
    """The FastStream broker every service is built on."""
    opts = connect_options(s)
    servers = opts.pop("servers")
    opts.pop("tls", None)
    tls = _tls_context(s)
    if tls is not None:
        from faststream.security import BaseSecurity

        extra.setdefault("security", BaseSecurity(ssl_context=tls))
    extra.setdefault("log_level", logging.DEBUG)  # per-message "Received/Processed" lines only at debug
    opts.update(extra)
    return NatsBroker(servers, **opts)


def stream_config(kind: Kind, replicas: int = 1) -> StreamConfig:
    """The declared configuration of one stream."""
    spec = STREAMS[kind]
    return StreamConfig(
        name=spec.name,
        subjects=spec.subjects,
        retention=RetentionPolicy.WORK_QUEUE if spec.retention is Retention.WORK_QUEUE else RetentionPolicy.LIMITS,
        max_age=spec.max_age_days * 86400,
        duplicate_window=spec.duplicate_window_s,
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


_COMPARED = ("subjects", "retention", "max_age", "duplicate_window", "num_replicas", "storage")
_COMPARED_CONSUMER = ("filter_subject", "ack_policy", "ack_wait", "max_deliver", "max_ack_pending")


def _diff(current: Any, wanted: Any, fields: Iterable[str]) -> list[str]:
    out = []
    for f in fields:
        a, b = getattr(current, f, None), getattr(wanted, f, None)
        if a != b:
            out.append(f"{f}: {a} -> {b}")
    return out


async def declare(nc: Client, s: NatsSettings, *, dry_run: bool = False) -> list[Change]:
    """Create or update every stream and consumer; idempotent. Returns what changed (or would)."""
    js = nc.jetstream()
    changes: list[Change] = []
    for kind in STREAMS:
        wanted = stream_config(kind, s.stream_replicas)
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
        if any(d.startswith(("retention", "storage")) for d in diffs):
            changes.append(Change("stream", wanted.name, "differs", "; ".join(diffs) + " (cannot be changed in place)"))
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
    return changes


_COMPARED_KV = ("max_msgs_per_subject", "storage", "num_replicas")


async def _declare_kv(js: Any, s: NatsSettings, *, dry_run: bool) -> Change:
    """The run-state KV bucket: created if missing, its history, storage and replicas kept as declared."""
    from jetl.state import BUCKET, kv_config

    wanted = kv_config(s.stream_replicas)
    stream = f"KV_{BUCKET}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        if not dry_run:
            await js.create_key_value(wanted)
        return Change("kv", BUCKET, "created")
    current = {
        "max_msgs_per_subject": info.config.max_msgs_per_subject,
        "storage": info.config.storage,
        "num_replicas": info.config.num_replicas,
    }
    target = {"max_msgs_per_subject": wanted.history, "storage": wanted.storage, "num_replicas": wanted.replicas}
    diffs = [f"{k}: {current[k]} -> {target[k]}" for k in _COMPARED_KV if current[k] != target[k]]
    if not diffs:
        return Change("kv", BUCKET, "unchanged")
    if any(d.startswith("storage") for d in diffs):
        return Change("kv", BUCKET, "differs", "; ".join(diffs) + " (cannot be changed in place)")
    if not dry_run:
        config = info.config
        config.max_msgs_per_subject, config.num_replicas = wanted.history, wanted.replicas
        try:
            await js.update_stream(config)
        except Exception as exc:
            return Change("kv", BUCKET, "differs", f"{'; '.join(diffs)} (update refused: {exc})")
    return Change("kv", BUCKET, "updated", "; ".join(diffs))


async def read_stream(nc: Client, kind: Kind, subject: str, *, timeout: float = 5.0) -> AsyncIterator[Any]:
    """Every message `kind`'s stream keeps under `subject` (a filter), oldest first, then stop.

    An ordered consumer: nothing durable is left behind. This is how the log is read back (replay reads JETL_RAW,
    redrive and `jetl dlq` read JETL_DLQ).
    """
    js = nc.jetstream()
    try:
        info = await js.stream_info(STREAMS[kind].name, subjects_filter=subject)
    except NotFoundError:
        return
    if not info.state.subjects:
        return
    sub = await js.subscribe(
        subject,
        ordered_consumer=True,
        stream=STREAMS[kind].name,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except TimeoutError:
                return
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def wait_for_nats(s: NatsSettings, timeout: float = 15.0) -> None:
    """Wait until NATS accepts a connection (services starting beside a server that is still booting)."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            # max_reconnect_attempts=0 makes nats-py retry forever (the deadline here never came); 1 fails fast
            nc = await connect(s, allow_reconnect=False, max_reconnect_attempts=1)
            await nc.close()
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.2)
    from jetl.errors import TransientError

    raise TransientError(f"NATS at {s.url} did not answer within {timeout:.0f}s: {last}")


class Bus:
    """Publishes jetl messages on a FastStream broker, each with its dedup id, waiting for the stream's ack."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker

    async def _publish(self, body: bytes, subject: str, msg_id: str, kind: Kind) -> bool:
        """Publish and wait for the stream's ack; True when the stream dropped it as a duplicate of `msg_id`."""
        ack = await self.broker.publish(body, subject, headers={MSG_ID: msg_id}, stream=STREAMS[kind].name)
        return bool(getattr(ack, "duplicate", False))

    async def run_request(self, req: RunRequest) -> bool:
        """Queue a run request for the extractor; True when this run id was already queued (deduplicated)."""
        return await self._publish(
            req.model_dump_json().encode(), subjects.run_request(req.pipeline), f"run/{req.run_id}", Kind.RUN
        )

    async def request(self, req: RunRequest, code_hash: str = "", service: str = "cli") -> bool:
        """Log run.requested, then queue the request; both dedup on the run id (True: it was already queued)."""
        from jetl.events import RunRequested

        await self.event(
            RunRequested(
                pipeline=req.pipeline,
                run_id=req.run_id,
                trigger=req.trigger,
                data_interval_start=req.data_interval_start,
                data_interval_end=req.data_interval_end,
                parent_run_id=req.parent_run_id,
                shadow=req.shadow,
                redrive=req.redrive,
                service=service,
                code_hash=code_hash,
            )
        )
        return await self.run_request(req)

    async def raw_batch(self, batch: Batch, records: list[Any] | bytes) -> None:
        """Publish an extracted batch."""
        await self._publish(
            encode_batch(batch, records), subjects.raw(batch.pipeline, batch.run_id), batch.batch_id, Kind.RAW
        )

    async def clean_batch(self, batch: Batch, records: list[Any] | bytes) -> None:
        """Publish a transformed batch."""
        await self._publish(
            encode_batch(batch, records),
            subjects.clean(batch.pipeline, batch.run_id),
            batch.batch_id,
            Kind.CLEAN,
        )

    async def event(self, ev: _Event) -> None:
        """Append a lifecycle event to the log."""
        await self._publish(
            ev.model_dump_json().encode(), subjects.events(ev.pipeline, ev.run_id), ev.msg_id(), Kind.EVENTS
        )

    async def dead_letter(self, dl: DeadLetter) -> None:
        """Keep rejected records with the reason."""
        await self._publish(dl.model_dump_json().encode(), subjects.dlq(dl.pipeline, dl.stage), dl.msg_id, Kind.DLQ)
