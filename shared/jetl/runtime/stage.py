"""How a stage decides each input message's ack: the error taxonomy decides ack, nak (with backoff) or dead-letter.

Every consumer (the extractor, transformer and loader, the scheduler's tracker and watchdog) handles its messages in
`async with settle(msg, dead_letter):`, the one ack rule: ack on success; a transient error naks with backoff until
`MAX_DELIVER`; a terminal one (or the last delivery of a transient one) is dead-lettered, then term'ed.

An outage (`jetl.errors.DestinationUnavailable`: a destination that is down or unreachable) lasts longer than that
backoff (about 4 s over the deliveries), so the loader rides one out first (`ride_out_outage`): each delivery retries
the write in place, its ack wait beaten, for a share of the outage budget, before the ack rule takes the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from nats.errors import NotJSMessageError

from jetl import metrics
from jetl.errors import DestinationUnavailable, StoreFull, TerminalError, classify, refused_for_room
from jetl.events import BatchRejected, RunFailed
from jetl.logging import get_logger
from jetl.messages.deadletter import DeadLetter
from jetl.messages.models import Batch
from jetl.messages.wire import decode_batch
from jetl.runtime.service import ServiceContext
from jetl.subjects import Kind, Stage, pattern
from jetl.topology import MAX_DELIVER

Outcome = Literal["ack", "nak", "term"]
FULL_HINT = (
    "a stream, the state bucket (JETL_NATS__STATE_MAX_BYTES) or the JetStream store is full; `jetl health` names it"
)


DeadLetterFn = Callable[[BaseException], Awaitable[None]]
"""Records why a message is given up (a stage's dead letter; the tracker and the watchdog log it)."""
log = get_logger("jetl.stage")


async def open_batch(msg: Any, what: str, kind: Kind | None = None) -> tuple[Batch, bytes] | None:
    """A batch message's envelope and body; None (the message is term'ed, with a log line) when it cannot be read,
    or when its envelope names another pipeline or run than the `kind` subject it came on (the subject is what NATS
    permissions judge): no redelivery can mend it."""
    try:
        batch, body = decode_batch(msg.data)
        subject = getattr(msg, "subject", None)
        if kind is not None and isinstance(subject, str) and subject != pattern(kind, batch.pipeline, batch.run_id):
            raise TerminalError(f"its envelope names pipeline {batch.pipeline!r} run {batch.run_id!r}, not {subject}")
        return batch, body
    except Exception as exc:
        log.error(f"unreadable {what}", error=str(exc))
        await msg.term()
        return None


async def reject_batch(
    ctx: ServiceContext, batch: Batch, body: bytes, stage: Stage, exc: BaseException, fields: dict[str, Any]
) -> None:
    """Dead-letter a whole batch that could not pass `stage` (all of its records, and the error), then log
    batch.rejected with the event `fields` of the stage.

    run.failed, when the run fails, goes on the log before batch.rejected: the tracker folds in order, and a run whose
    last pending batch this was would otherwise settle and complete (its cursor moved past input it never loaded)
    before the failure reached it.

    A transient error gets here only when the batch has reached MAX_DELIVER: as when JetStream gives up on a message
    no stage acked (`jetl_scheduler.watchdog`), the run fails, naming the batch and the stage; the batch is in the
    DLQ either way, for a redrive once the cause is mended. An error that `fails_run` (a batch a schema contract
    froze: `jetl.errors.SchemaFrozen`) fails the run the same way, with its own message."""
    await ctx.bus.dead_letter(DeadLetter.of_batch(batch, body, stage, exc))
    transient = classify(exc) == "transient"
    if transient or getattr(exc, "fails_run", False):  # before the batch settles: its run must not complete
        await ctx.bus.event(
            RunFailed(
                **{k: fields[k] for k in ("pipeline", "run_id", "service", "instance", "code_hash") if k in fields},
                error=gave_up(batch.batch_id, stage, f"{type(exc).__name__}: {exc}") if transient else str(exc),
                stage=stage,
            )
        )
    await ctx.bus.event(BatchRejected(**fields, stage=stage, records=batch.count, reason=str(exc), scope="batch"))


def gave_up(batch_id: str, stage: Stage, why: str) -> str:
    """The run.failed error of a batch that reached max_deliver at `stage`."""
    return f"batch {batch_id} reached max_deliver ({MAX_DELIVER} deliveries) at stage {stage}: {why}"


def delivery_count(msg: Any) -> int:
    """How many times this message was delivered (1 for in-memory test messages)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def stream_sequence(msg: Any) -> int | None:
    """The message's sequence in its stream, its place in the log (None for a message without JetStream metadata,
    as in the in-memory test broker)."""
    try:
        return int(msg.metadata.sequence.stream)
    except (AttributeError, TypeError, ValueError, IndexError, NotJSMessageError):
        return None


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter."""
    return float(random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1))))


T = TypeVar("T")
OUTAGE_STEP_CAP_S = 5.0
"""The longest pause between two tries of a write during an outage: a destination that is back is written within
about this long."""


async def ride_out_outage(work: Callable[[], Awaitable[T]], budget_s: float, attempt: int = 1) -> T:
    """`work()`, tried again while it raises DestinationUnavailable, with capped exponential backoff (1, 2, 4, 5, 5...
    seconds, jittered), for this delivery's share of `budget_s`: budget_s / MAX_DELIVER each, so the deliveries
    JetStream allows ride out an outage of about `budget_s` in all (a process that dies mid-way gives its share back
    to the next delivery). Past its share the error goes to the ack rule (`decide_ack`): nak until MAX_DELIVER, then
    the DLQ and a failed run, naming the batch. The caller's ack wait is beaten meanwhile (`keep_alive`)."""
    deadline = time.monotonic() + max(0.0, budget_s) / MAX_DELIVER
    tries = 0
    while True:
        try:
            return await work()
        except DestinationUnavailable as exc:
            tries += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            pause = min(left, OUTAGE_STEP_CAP_S, 2.0 ** (tries - 1)) * random.uniform(0.8, 1.0)
            log.warning(
                "destination unavailable, retrying",
                error=str(exc),
                delivery=attempt,
                tries=tries,
                retry_in_s=round(pause, 2),
            )
            await asyncio.sleep(pause)


async def decide_ack(msg: Any, exc: BaseException | None, dead_letter: DeadLetterFn) -> Outcome:
    """Ack on success; nak a transient failure with backoff until MAX_DELIVER; otherwise dead-letter then term.

    If the dead letter itself cannot be published, the message is nak'ed: it is never dropped.
    """
    if exc is None:
        await msg.ack()
        metrics.ack_decided("ack")
        return "ack"
    attempt = delivery_count(msg)
    disposition = classify(exc)
    if disposition == "transient" and attempt < MAX_DELIVER:
        metrics.ack_decided("nak", disposition)
        delay = backoff(attempt)
        said = refused_for_room(exc)  # a write JetStream refused for room outside a publish (a state bucket put)
        error = (
            f"{exc}" if said is None or isinstance(exc, StoreFull) else f"JetStream has no room ({said}): {FULL_HINT}"
        )
        log.warning("transient failure, will retry", error=error, attempt=attempt, retry_in_s=round(delay, 2))
        await msg.nak(delay=delay)
        return "nak"
    try:
        await dead_letter(exc)
    except Exception as dl_exc:
        log.error(
            "could not dead-letter; retrying the message",
            error=str(dl_exc),
            original=str(exc),
            exc_info=dl_exc,
        )
        await msg.nak(delay=backoff(attempt))
        metrics.ack_decided("nak", disposition)
        return "nak"
    metrics.ack_decided("term", disposition)
    log.error("gave up on the message", error=str(exc), error_type=type(exc).__name__, attempt=attempt)
    await msg.term()
    return "term"


@contextlib.asynccontextmanager
async def settle(msgs: Any | Sequence[Any], dead_letter: DeadLetterFn) -> AsyncIterator[None]:
    """Run the body, then decide the ack of `msgs` (one message, or the messages one body handles together) by its
    outcome: `decide_ack` for each. The body's exception is taken (and decided), never raised on; a cancellation is
    not an outcome and passes through (the messages come back after the ack wait)."""
    batch = list(msgs) if isinstance(msgs, (list, tuple)) else [msgs]
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:
        error = exc
    for msg in batch:
        await decide_ack(msg, error, dead_letter)
