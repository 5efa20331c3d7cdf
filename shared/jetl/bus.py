"""The message bus: connections (nats-py and the FastStream broker) and publishing.

Publishing goes through the FastStream broker (so `TestNatsBroker` can stand in for NATS in unit tests), always
with `Nats-Msg-Id`, so a redelivered input publishes no duplicate output inside the stream's duplicate window.
What is declared on NATS lives in `jetl.topology`; reading the log back in `jetl.eventlog`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from jetl import subjects
from jetl.connection import _tls_context, connect_options, fail_fast_connection
from jetl.connection import connect as connect
from jetl.errors import IN_PROCESS, StoreFull, TerminalError, TransientError, refused_for_room
from jetl.events import RunRequested, _Event
from jetl.logging import get_logger
from jetl.messages.deadletter import DeadLetter
from jetl.messages.models import Batch, RunRequest
from jetl.messages.payload import PAYLOAD_HEADROOM
from jetl.messages.wire import encode_batch
from jetl.settings import JetlSettings, NatsSettings
from jetl.subjects import STREAMS, Kind, Role, Stage

log = get_logger("jetl.bus")

if TYPE_CHECKING:
    from faststream.nats import NatsBroker

MSG_ID = "Nats-Msg-Id"
# A stream leader's election on a three-node cluster took 4-7 s on a loaded two-core machine
# (tests/reliability/test_cluster.py); publishes wait out twice that before the error reaches the stage.
LEADERLESS_S = 15.0
LEADERLESS_RETRY_S = 0.5
LEADERLESS = (NoStreamResponseError, NoRespondersError, ServiceUnavailableError, nats.errors.TimeoutError)
"""What a publish gets while its stream has no leader (`Bus._publish` waits them out)."""


def leaderless(exc: BaseException) -> bool:
    """Whether a publish failed only because its stream is between leaders (`Bus._publish` tries it again). A full
    stream answers 503 too (`ServiceUnavailableError`, code 10077 "maximum bytes exceeded"): that is no election."""
    if refused_for_room(exc) is not None:
        return False
    return isinstance(exc, LEADERLESS) or (isinstance(exc, APIError) and exc.err_code == IN_PROCESS)


FULL_RETRY_S = (0.25, 5.0)
"""First and longest pause between tries of a publish refused for want of room (the pause doubles up to the cap)."""


UNANSWERED_S = 5.0
"""Seconds a stream leaves publishes unanswered before publishers report it (`unanswered`) while they retry."""


def unanswered(kind: Kind, seconds: float) -> TransientError:
    """Why publishes to `kind`'s stream wait: it has not answered for `seconds`. An election ends within seconds; a
    server whose JetStream store filled its disk ("no space left on device" in its log) does not answer that stream
    again until restarted, which `jetl up` does by itself once there is room, and a server run otherwise needs."""
    return TransientError(
        f"stream {STREAMS[kind].name} has not answered publishes for {seconds:.0f}s: a leader election, or the disk "
        "under its server's JetStream store is full (its log says 'no space left on device'): free room there, then "
        "restart nats-server (`jetl up` restarts its own once there is room)"
    )


def store_full(kind: Kind, exc: BaseException) -> StoreFull | None:
    """`exc` as the store that is full, named with the setting that raises its limit; None when it is not that."""
    said = refused_for_room(exc)
    if said is None:
        return None
    name = STREAMS[kind].name
    if "maximum" in said:  # the stream's own limit: maximum bytes / messages exceeded
        return StoreFull(
            f"stream {name}",
            said,
            f'JETL_NATS__STREAM_MAX_BYTES (its "{kind.value}" entry, then `jetl deploy`)',
        )
    return StoreFull(
        f"the JetStream store (writing {name})",
        said,
        "the server's max_file_store (JETL_EMBEDDED_NATS__MAX_FILE_STORE_MB under `jetl up`) or the disk under its "
        "store directory",
    )


DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""NATS's default `max_payload`, assumed until a connection says otherwise (its server INFO)."""


async def raw_decoder(msg: Any) -> Any:
    """Leave bodies as bytes: a stage decodes (and validates) a whole batch itself, once."""
    return msg.body


def make_broker(s: NatsSettings, **extra: Any) -> NatsBroker:
    """The FastStream broker every service is built on (FastStream is imported here: a CLI command that only reads
    never pays for it)."""
    from faststream.nats import NatsBroker
    from faststream.security import BaseSecurity, SASLPlaintext

    opts = connect_options(s)
    servers = opts.pop("servers")
    opts.pop("tls", None)
    user, password = opts.pop("user", None), opts.pop("password", "")
    tls = _tls_context(s)
    if user is not None:  # FastStream takes user/password (and TLS with them) as a security object only
        extra.setdefault("security", SASLPlaintext(user, password, ssl_context=tls))
    elif tls is not None:
        extra.setdefault("security", BaseSecurity(ssl_context=tls))
    extra.setdefault("log_level", logging.DEBUG)  # per-message "Received/Processed" lines only at debug
    # a logger of jetl's naming, not FastStream's own (which writes coloured text to stdout past every handler):
    # its lines reach the root handler that `configure_logging` renders as the service's other lines
    extra.setdefault("logger", logging.getLogger("faststream.jetl"))
    opts.update(extra)
    return NatsBroker(servers, **opts)


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
    raise TransientError(f"NATS at {s.url} did not answer within {timeout:.0f}s: {last}")


class Bus:
    """Publishes jetl messages on a FastStream broker, each with its dedup id, waiting for the stream's ack, as one
    role: its events go on that role's subjects (`subjects.events`), the only ones its NATS user may publish."""

    def __init__(self, broker: NatsBroker, role: Role, full_wait: float = 0.0) -> None:
        self.broker = broker
        self.role = role
        self.full_wait = full_wait
        """Seconds a publish to a full stream waits for room before it raises StoreFull (`NatsSettings.full_wait`)."""
        self.paused: TransientError | None = None
        """Why publishing is paused right now (a full stream or store, or a stream that does not answer:
        `unanswered`), for health and logs; None when it is not."""

    async def _publish(self, body: bytes, subject: str, msg_id: str, kind: Kind) -> bool:
        """Publish and wait for the stream's ack; True when the stream dropped it as a duplicate of `msg_id`.

        On a cluster a stream has no leader for a few seconds after its leader's node dies or is cut off: a publish
        gets no answer, no responder, a timeout, a 503, or "in process" for its own retry (`leaderless`). That is
        retried here for up to `LEADERLESS_S` (safe: `Nats-Msg-Id` drops a second copy), instead of failing the
        handler: each failure would spend one of the input's MAX_DELIVER deliveries, and a quick nak backoff spends
        all of them inside one election (a partition test failed a run on timeouts that way).

        A stream (or the server's store) that is full pauses the publish instead: it is tried again, less and less
        often, for up to `full_wait` seconds, while the stage's input is kept alive (`keep_alive` beats); room comes
        back as the consumers downstream ack (JETL_RAW and JETL_CLEAN keep only what is not yet done) or as disk is
        freed, and the publish goes on by itself. Past `full_wait` it raises StoreFull, naming the store and the
        setting to raise, never as a leader election.

        A stream that leaves publishes unanswered past `LEADERLESS_S` while it answers its info with a leader is no
        election: its server's store hit a full disk ("no space left on device") and takes no writes to it until
        restarted (`jetl up` does so once there is room: `jetl.stack.disk`). The publish then waits for it like a
        full store, up to `full_wait`, and `paused` names it (`unanswered`) from `UNANSWERED_S` on.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADERLESS_S
        full_since: float | None = None
        stalled_since: float | None = None
        """Since when publishes went unanswered (`leaderless`)."""
        pause = FULL_RETRY_S[0]
        while True:
            try:
                ack = await self.broker.publish(body, subject, headers={MSG_ID: msg_id}, stream=STREAMS[kind].name)
                if stalled_since is not None and loop.time() - stalled_since >= UNANSWERED_S:
                    log.info(
                        "publishing resumed", stream=STREAMS[kind].name, paused_s=round(loop.time() - stalled_since, 1)
                    )
                if self.paused is not None and not isinstance(self.paused, StoreFull):
                    self.paused = None  # an unanswered stream answers again
                if full_since is not None:
                    log.info(
                        "publishing resumed", stream=STREAMS[kind].name, paused_s=round(loop.time() - full_since, 1)
                    )
                    self.paused = None
                return bool(getattr(ack, "duplicate", False))
            except Exception as exc:
                full = store_full(kind, exc)
                if full is not None:
                    if full_since is None:
                        full_since = loop.time()
                        log.warning("publishing paused", reason=str(full), wait_s=self.full_wait)
                    self.paused = full
                    if loop.time() - full_since >= self.full_wait:
                        self.paused = None
                        raise full from exc
                    await asyncio.sleep(pause)
                    pause = min(FULL_RETRY_S[1], pause * 2)
                    deadline, stalled_since = loop.time() + LEADERLESS_S, None
                    continue
                if not leaderless(exc):
                    raise
                stalled_since = loop.time() if stalled_since is None else stalled_since
                stalled = loop.time() - stalled_since
                if stalled >= UNANSWERED_S:  # it stays until a publish is answered: health keeps saying why
                    self.paused = unanswered(kind, stalled)
                if loop.time() >= deadline:
                    # An election is over by now. A stream that answers its info but not publishes has a leader that
                    # stores nothing (its disk filled): the publish waits for it as for a full store.
                    if stalled >= self.full_wait or not await self._has_leader(kind):
                        raise
                    if deadline - LEADERLESS_S <= stalled_since:
                        log.warning("publishing paused", reason=str(self.paused), wait_s=self.full_wait)
                    deadline = loop.time() + LEADERLESS_S
                await asyncio.sleep(LEADERLESS_RETRY_S)

    async def _has_leader(self, kind: Kind) -> bool:
        """Whether `kind`'s stream answers its info with a leader (False when it cannot be asked)."""
        try:
            info = await self.broker.connection.jetstream().stream_info(STREAMS[kind].name)
        except Exception:
            return False
        return info.cluster is None or info.cluster.leader is not None

    async def run_request(self, req: RunRequest) -> bool:
        """Queue a run request for the extractor; True when this run id was already queued (deduplicated)."""
        return await self._publish(
            req.model_dump_json().encode(), subjects.run_request(req.pipeline), f"run/{req.run_id}", Kind.RUN
        )

    async def request(self, req: RunRequest, code_hash: str = "", service: str = "cli") -> bool:
        """Log run.requested, then queue the request; both dedup on the run id (True: it was already queued)."""
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

    async def publish_work(self, body: bytes, subject: str, msg_id: str) -> bool:
        """Publish a work item (a run's partition, `PartitionWork`) to JETL_RUNS; True when it was a duplicate."""
        return await self._publish(body, subject, msg_id, Kind.RUN)

    async def raw_batch(self, batch: Batch, records: list[Any] | bytes) -> None:
        """Publish an extracted batch."""
        await self._publish(
            encode_batch(batch, records), subjects.raw(batch.pipeline, batch.run_id), batch.part_id, Kind.RAW
        )

    async def clean_batch(self, batch: Batch, records: list[Any] | bytes) -> None:
        """Publish a transformed batch (or one part of it: each part dedups on its own id)."""
        await self._publish(
            encode_batch(batch, records),
            subjects.clean(batch.pipeline, batch.run_id),
            batch.part_id,
            Kind.CLEAN,
        )

    async def event(self, ev: _Event) -> None:
        """Append a lifecycle event to the log."""
        await self._publish(
            ev.model_dump_json().encode(),
            subjects.events(ev.pipeline, ev.run_id, self.role),
            ev.msg_id(),
            Kind.EVENTS,
        )

    @property
    def max_payload(self) -> int:
        """The largest message the server takes: `max_payload` of the connection's server INFO."""
        try:
            size = self.broker.connection.max_payload
        except Exception:  # not connected (an in-memory test broker)
            return DEFAULT_MAX_PAYLOAD
        return size if isinstance(size, int) and size > 0 else DEFAULT_MAX_PAYLOAD

    async def keep(self, name: str, data: bytes) -> str:
        """Keep `data` in the dead-letter bodies bucket under `name` (once: a redelivered input finds it there), and
        return its reference, `<bucket>/<name>`."""
        from nats.js.errors import NotFoundError

        try:
            store = await self.broker.connection.jetstream().object_store(subjects.DLQ_BODIES_BUCKET)
            try:
                await store.get_info(name)
            except NotFoundError:
                await store.put(name, data)
        except Exception as exc:  # a full or missing bucket: the input is retried, never dropped
            raise TransientError(
                f"could not keep {len(data)} bytes as {name!r} in {subjects.DLQ_BODIES_BUCKET}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return f"{subjects.DLQ_BODIES_BUCKET}/{name}"

    async def dead_letter(self, dl: DeadLetter) -> None:
        """Keep rejected records with the reason; a letter too large for a message keeps its records by reference
        (`DeadLetter.body_ref`), so an oversized batch is dead-lettered, never lost."""
        body = dl.to_json()
        if len(body) > self.max_payload - PAYLOAD_HEADROOM:
            ref = await self.keep(dl.msg_id, body)
            body = dl.model_copy(update={"records": [], "body_ref": ref}).to_json()
        await self._publish(body, subjects.dlq(dl.pipeline, dl.stage), dl.msg_id, Kind.DLQ)

    async def dead_letter_oversized(self, batch: Batch, stage: Stage, records: list[tuple[str, bytes]]) -> None:
        """Dead-letter records too large for any message: each (origin or "", its JSON) is kept in the bodies bucket
        and the letter names them by reference, so they are set aside, never dropped."""
        kept = [
            (origin, len(data), await self.keep(f"{batch.batch_id}/{stage}/{k}", data))
            for k, (origin, data) in enumerate(records)
        ]
        await self.dead_letter(DeadLetter.of_oversized(batch, stage, kept, self.max_payload))

    async def fetch(self, ref: str) -> bytes:
        """The body a dead letter names by reference (`<bucket>/<name>`).

        Read chunk by chunk (`$JS.API.STREAM.MSG.GET`, next by subject), not through nats-py's `get`, whose ordered
        consumer is a push consumer: no service may create consumers (`jetl.access`). The digest is checked."""
        bucket, _, name = ref.partition("/")
        if bucket != subjects.DLQ_BODIES_BUCKET or not name:
            raise TerminalError(f"not a dead-letter body reference: {ref!r}")
        nc = self.broker.connection
        info = await (await nc.jetstream().object_store(bucket)).get_info(name)
        data = bytearray()
        if info.size:
            async for chunk in read_one_by_one(nc, f"OBJ_{bucket}", subjects.object_chunks(bucket, info.nuid or "")):
                data += chunk.data or b""
                if len(data) >= info.size:
                    break
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if info.digest is None or info.digest.partition("=")[2] != digest:
            raise TerminalError(f"the body {ref!r} does not match its digest")
        return bytes(data)


async def read_one_by_one(nc: Client, stream: str, subject: str) -> AsyncIterator[Any]:
    """Every message of `stream` under `subject` (a filter), oldest first, each read by its own request (next by
    subject, `$JS.API.STREAM.MSG.GET`): no consumer is created, which is how a service reads a stream (its user may
    create none, so that none can push a stream to a subject of its choosing). One request a message: for the few,
    large messages a replay or a redrive reads; the operator's readers use consumers (`jetl.eventlog`)."""
    js = nc.jetstream()
    seq = 0
    while True:
        try:
            msg = await js.get_msg(stream, seq + 1, subject=subject, next=True)
        except NotFoundError:
            return
        yield msg
        seq = msg.seq or seq + 1


async def nats_connection(s: JetlSettings) -> Any:
    """A nats-py connection that fails fast (no reconnect loop) with one clear error."""
    return await fail_fast_connection(s.nats)


async def riding_connection(s: JetlSettings) -> Any:
    """A nats-py connection for a command that follows the log (`jetl run`, `logs --follow`): it fails fast when NATS
    cannot be reached at all, and once connected it reconnects for up to two minutes (a NATS restart mid-run).

    Readers notice a reconnect by `nc.stats["reconnects"]` and resume from the last sequence they saw
    (`jetl.eventlog.tail`).
    """
    probe = await nats_connection(s)  # one attempt, one clear error: a server that is down is not waited for
    await probe.close()

    async def quiet(exc: Exception) -> None:  # a restart would print a traceback per reconnect attempt
        return None

    # 240 attempts 0.5 s apart: NATS may be away two minutes (a restart takes seconds); not for ever, so a
    # reconnect loop that outlives its connection (see JetlClient.__aexit__) ends on its own
    return await connect(s.nats, max_reconnect_attempts=240, reconnect_time_wait=0.5, error_cb=quiet)
