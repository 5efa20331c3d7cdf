"""A client for people and scripts: request runs, follow them through the event log, read dead letters.

The CLI is a thin layer over this; tests and notebooks can use it directly:

    async with JetlClient(settings) as jc:
        req = await jc.request_run("orders")
        state = await jc.wait(req.pipeline, req.run_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from nats.aio.client import Client
from nats.js.kv import KeyValue

from jetl import subjects
from jetl._internal.connect import nats_connection, riding_connection
from jetl.bus import Bus, make_broker
from jetl.errors import ConfigError, TerminalError, TransientError, WaitTimedOut, classify
from jetl.eventlog import read_events, read_stream, tail
from jetl.events import Event, OperatorAction, RunCancelled, RunCompleted, RunFailed, parse_event
from jetl.messages import MALFORMED_INPUT, OVERSIZED_RECORD, DeadLetter, RunRequest, Trigger
from jetl.projection import RunState, fold
from jetl.protocols import Diff
from jetl.schedule import Slot
from jetl.settings import JetlSettings
from jetl.state import bucket, bucket_keys, get_run, list_runs
from jetl.subjects import Kind
from jetl.topology import require_deployment

REQUEST_RETRY_S = 60.0
"""How long `request_run` keeps sending a run request while NATS is away."""


def manual_run_id(pipeline: str) -> str:
    """A fresh run id for a manual run: `<pipeline>-m<UTC stamp><random>`."""
    return f"{pipeline}-m{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}{secrets.token_hex(2)}"


class JetlClient:
    """Connected to NATS (plain nats-py for reads, FastStream broker for publishes)."""

    def __init__(self, settings: JetlSettings | None = None) -> None:
        self.settings = settings or JetlSettings()
        self.nc: Client | None = None
        # the broker's own log lines (a NATS restart: "Connection broken ...") go to stderr through the logging
        # module, never to stdout, where `--json` output is
        self.broker = make_broker(self.settings.nats, logger=logging.getLogger("jetl.client"))
        self.bus = Bus(self.broker)

    async def __aenter__(self) -> JetlClient:
        # fails fast when NATS is down; once connected, rides through a NATS restart (follow resumes, see `follow`)
        self.nc = await riding_connection(self.settings)
        try:
            # a client never declares: a server without jetl's streams is the wrong server, not a place to make them
            await require_deployment(self.nc, self.settings.nats.url)
            await self.broker.connect()
        except BaseException:
            await self.nc.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Stopping the broker while NATS is away raises (ConnectionReconnectingError, from a drain) and leaves its
        # connection reconnecting, a task that keeps asyncio.run from returning: close every connection outright,
        # and never let closing hide the error being raised.
        conns: list[Any] = [self.nc]
        with contextlib.suppress(Exception):
            conns.append(self.broker.connection)
        with contextlib.suppress(Exception):
            await self.broker.stop()
        for nc in conns:
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.close()
            # nats-py's reconnect loop can lose the cancel close() sends it (asyncio.wait_for on Python 3.11) and
            # retry on, keeping asyncio.run from returning: cancel it once more
            task = getattr(nc, "_reconnection_task", None)
            if task is not None and not task.done():
                task.cancel()

    @property
    def conn(self) -> Client:
        """The nats-py connection."""
        assert self.nc is not None, "use `async with JetlClient(...)`"
        return self.nc

    async def request_run(
        self,
        pipeline: str,
        *,
        run_id: str | None = None,
        trigger: Trigger = "manual",
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
        parent_run_id: str | None = None,
        params: dict[str, Any] | None = None,
        force: bool = False,
        code_hash: str = "",
        replay_of: str | None = None,
        shadow: bool = False,
        redrive: list[int] | None = None,
        retry_s: float = REQUEST_RETRY_S,
    ) -> RunRequest:
        """Queue one run (run.requested is logged first); `replay_of` / `redrive` make it a replay or a redrive.

        While NATS is away (a restart) the request is sent again for up to `retry_s` seconds: both of its messages
        deduplicate on the run id, so a request that did land is not queued twice.
        """
        req = RunRequest(
            pipeline=pipeline,
            run_id=run_id or manual_run_id(pipeline),
            trigger=trigger,
            data_interval_start=data_interval_start,
            data_interval_end=data_interval_end,
            parent_run_id=parent_run_id,
            params=params or {},
            force=force,
            replay_of=replay_of,
            shadow=shadow,
            redrive=redrive or [],
        )
        deadline = time.monotonic() + retry_s
        while True:
            try:
                await self.bus.request(req, code_hash=code_hash)
                return req
            except Exception as exc:
                if classify(exc) != "transient" or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def follow(self, pipeline: str, run_id: str | None = None) -> AsyncIterator[Event]:
        """Every event of a run (or of a pipeline's runs), from the beginning of the log, then live.

        It rides through a NATS restart, resuming after the last event it yielded (`jetl.eventlog.tail`).
        """
        async for msg in tail(self.conn, Kind.EVENTS, subjects.pattern(Kind.EVENTS, pipeline, run_id)):
            yield parse_event(msg.data)

    async def wait(
        self,
        pipeline: str,
        run_id: str,
        *,
        timeout: float = 600.0,
        on_event: Callable[[Event, RunState], None] | None = None,
    ) -> RunState:
        """Fold a run's events until it completes or fails; returns its state.

        It rides through a NATS restart. On `timeout` it raises WaitTimedOut saying what it waited for, the last
        event it saw, and whether NATS answers (only then is NATS to blame).
        """
        state: RunState | None = None
        last: tuple[Event, float] | None = None

        async def _consume() -> RunState:
            nonlocal state, last
            async for ev in self.follow(pipeline, run_id):
                state, last = fold(state, ev), (ev, time.monotonic())
                if on_event is not None:
                    on_event(ev, state)
                if isinstance(ev, (RunCompleted, RunFailed, RunCancelled)):
                    return state
            raise AssertionError("unreachable")

        try:
            return await asyncio.wait_for(_consume(), timeout)
        except TimeoutError as exc:
            nats_up = await self.nats_answers()
            raise WaitTimedOut(
                wait_message(pipeline, run_id, timeout, state, last, None if nats_up else self.settings.nats.url),
                nats_up=nats_up,
            ) from exc

    async def nats_answers(self) -> bool:
        """Whether NATS answers right now (this connection is up, or a fresh one gets through)."""
        if self.nc is not None and self.nc.is_connected:
            return True
        try:
            nc = await nats_connection(self.settings)
        except TransientError:
            return False
        await nc.close()
        return True

    async def run_state(self, pipeline: str, run_id: str) -> RunState | None:
        """The folded state of one run, from the log itself."""
        state: RunState | None = None
        async for ev in read_events(self.conn, pipeline, run_id):
            state = fold(state, ev)
        return state

    async def dead_letters(self, pipeline: str | None = None) -> list[DeadLetter]:
        """Dead letters kept for a pipeline (or all), oldest first."""
        return [dl for _, dl in await self.dead_letter_log(pipeline)]

    # The event log as a ledger: folded run states, one run's timeline, the destination's own count (asked of the
    # loader, the only process that may open it), and the runs that read the log back: replay, redrive, backfill.

    async def runs(self, pipeline: str | None = None) -> list[RunState]:
        """Run states as the tracker folded them into the state bucket, newest first."""
        return await list_runs(await bucket(self.conn), pipeline)

    async def events(self, run_id: str, pipeline: str | None = None) -> list[Event]:
        """One run's events, in log order (a run id alone finds it under any pipeline)."""
        subject = subjects.pattern(Kind.EVENTS, pipeline, run_id)
        return [parse_event(m.data) async for m in read_stream(self.conn, Kind.EVENTS, subject)]

    async def cancel(self, run_id: str, reason: str, pipeline: str | None = None, by: str = "") -> RunState:
        """End an unfinished run by an event (run.cancelled): the tracker folds it as failed, which lets later runs
        of its pipeline past the overlap guard. Raises ConfigError for a run the log does not know, or one that
        completed."""
        if not reason.strip():
            raise ConfigError("a cancellation needs a reason (--reason)")
        events = await self.events(run_id, pipeline)
        if not events:
            raise ConfigError(f"no events for run {run_id!r}: nothing to cancel (see `jetl status`)")
        state: RunState | None = None
        for ev in events:
            state = fold(state, ev)
        assert state is not None
        if state.status == "completed":
            raise ConfigError(f"run {run_id} of {state.pipeline} completed: there is nothing to cancel")
        await self.bus.event(
            RunCancelled(
                pipeline=state.pipeline, run_id=run_id, service="cli", code_hash=state.code_hash, reason=reason, by=by
            )
        )
        return state

    async def dead_letter_log(self, pipeline: str | None = None) -> list[tuple[int, DeadLetter]]:
        """Dead letters with their JETL_DLQ sequence (what a redrive names them by), oldest first."""
        async with contextlib.aclosing(self.iter_dead_letters(pipeline)) as letters:
            return [item async for item in letters]

    async def iter_dead_letters(self, pipeline: str | None = None) -> AsyncGenerator[tuple[int, DeadLetter], None]:
        """Dead letters with their JETL_DLQ sequence, oldest first, read one at a time: stop when you have enough
        (close it with `contextlib.aclosing`), and the rest is never read."""
        subject = subjects.pattern(Kind.DLQ, pipeline)
        async with contextlib.aclosing(read_stream(self.conn, Kind.DLQ, subject)) as messages:
            async for m in messages:
                yield m.metadata.sequence.stream, DeadLetter.model_validate_json(m.data)

    async def ask_loader(self, verb: str, body: dict[str, Any], timeout: float = 60.0) -> Any:
        """Request/reply to the loader service; its error comes back as a TransientError or TerminalError."""
        import orjson
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        try:
            msg = await self.conn.request(subjects.control("loader", verb), orjson.dumps(body), timeout=timeout)
        except NoRespondersError as exc:
            raise TransientError("no loader answered: is the loader service running? (`jetl up`)") from exc
        except (NatsTimeout, TimeoutError) as exc:
            raise TransientError(f"the loader did not answer {verb!r} within {timeout:.0f}s") from exc
        reply = orjson.loads(msg.data)
        if reply.get("ok"):
            return reply["result"]
        error = TransientError if reply.get("disposition") == "transient" else TerminalError
        raise error(f"loader could not {verb}: {reply.get('error')}")

    async def destination_count(self, pipeline: str) -> DestinationCount:
        """Rows in the pipeline's destination, counted by the loader (per run where the loader keeps lineage)."""
        return DestinationCount(pipeline=pipeline, **await self.ask_loader("count", {"pipeline": pipeline}))

    async def kv(self) -> KeyValue:
        """The state bucket (run states, cursors)."""
        return await bucket(self.conn)

    async def destination_max(self, pipeline: str, column: str, tie_breaker: str | None = None) -> list[Any] | None:
        """The last row of the pipeline's destination in (`column`, `tie_breaker`) order, as [value, key], read by
        the loader (None when empty)."""
        body = {"pipeline": pipeline, "column": column, "tie_breaker": tie_breaker}
        position: list[Any] | None = (await self.ask_loader("max", body))["position"]
        return position

    async def diff(
        self, pipeline: str, run_id: str, parent_run_id: str, *, drop: bool = True, sample: int = 10
    ) -> Diff:
        """A shadow replay's rows against its parent's, with up to `sample` keys of each kind (the loader drops the
        shadow afterwards unless `drop=False`)."""
        body = {"pipeline": pipeline, "run_id": run_id, "parent_run_id": parent_run_id, "drop": drop, "sample": sample}
        return Diff(**await self.ask_loader("diff", body))

    async def replay(
        self,
        pipeline: str,
        parent_run_id: str,
        *,
        shadow: bool = False,
        code_hash: str = "",
        timeout: float = 600.0,
        on_event: Callable[[Event, RunState], None] | None = None,
    ) -> RunState:
        """Send a run's raw batches through the current transformers and loader again, as a new run; wait for it.

        Without `shadow`, each replayed batch replaces its parent batch in the destination; with it, the rows go to a
        side table or folder, for `diff`. The parent must have finished extracting (its batch count is known).
        """
        parent = next((r for r in await self.runs(pipeline) if r.run_id == parent_run_id), None)
        if parent is None:
            raise ConfigError(f"no run {parent_run_id!r} of pipeline {pipeline!r} (see `jetl status {pipeline}`)")
        if parent.expected_batches is None:
            raise ConfigError(f"run {parent_run_id!r} never finished extracting ({parent.status}): nothing to replay")
        if not shadow:
            letters = await self.dead_letter_log(pipeline)
            status = dead_letter_status(letters, await self.runs(pipeline))
            redriven = sorted(
                why
                for seq, dl in letters
                if dl.run_id == parent_run_id and (why := status[seq]) is not None and why.startswith("redriven")
            )
            if redriven:
                raise ConfigError(
                    f"run {parent_run_id!r} had dead letters {redriven[0]}: a replay would load those records a "
                    "second time (a replay replaces the parent's batches, not the redrive's). --diff is fine."
                )
        run_id = f"{pipeline}{REPLAY_TAG}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}{secrets.token_hex(2)}"
        await self.request_run(
            pipeline,
            run_id=run_id,
            trigger="replay",
            parent_run_id=parent_run_id,
            replay_of=parent_run_id,
            shadow=shadow,
            code_hash=code_hash,
        )
        return await self.wait(pipeline, run_id, timeout=timeout, on_event=on_event)

    async def request_redrive(
        self, pipeline: str, *, run_id: str | None = None, seqs: list[int] | None = None, code_hash: str = ""
    ) -> RunRequest | None:
        """Queue a `redrive` run of a pipeline's dead letters (of one run, or the JETL_DLQ sequences `seqs`, or all)
        without waiting for it; None when there is nothing to send.

        Dead letters another redrive already took are left out, so redriving twice loads nothing twice. The run id
        is derived from the dead letters it takes: two people redriving at once make one run. A selection is read
        letter by letter, not by reading the pipeline's whole dead-letter log.
        """
        from jetl.deadletters import letters_at

        if seqs is not None:
            runs = await status_runs(await bucket(self.conn), pipeline)
            letters = [(q, dl) for q, dl in await letters_at(self.conn, seqs) if dl.pipeline == pipeline]
        else:
            runs = await self.runs(pipeline)
            letters = await self.dead_letter_log(pipeline)
        chosen = redrivable(letters, runs, run_id=run_id)
        if not chosen:
            return None
        rid = redrive_run_id(pipeline, chosen, runs)
        return await self.request_run(pipeline, run_id=rid, trigger="redrive", redrive=chosen, code_hash=code_hash)

    async def redrive(
        self,
        pipeline: str,
        *,
        run_id: str | None = None,
        code_hash: str = "",
        timeout: float = 600.0,
        on_event: Callable[[Event, RunState], None] | None = None,
    ) -> RunState | None:
        """Send dead letters (of one run, or all) back through as a `redrive` run and wait for it (see
        `request_redrive`); None when there is nothing to send."""
        req = await self.request_redrive(pipeline, run_id=run_id, code_hash=code_hash)
        if req is None:
            return None
        return await self.wait(pipeline, req.run_id, timeout=timeout, on_event=on_event)

    async def record_action(
        self,
        pipeline: str,
        action: Literal["pause", "resume", "run", "backfill", "redrive"],
        by: str,
        *,
        target_run_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> OperatorAction:
        """Write to the event log that `by` did `action` to a pipeline (and which run it made)."""
        ev = OperatorAction(
            pipeline=pipeline,
            service="ui",
            action=action,
            by=by,
            target_run_id=target_run_id,
            detail=detail or {},
        )
        await self.bus.event(ev)
        return ev

    async def backfill(
        self,
        pipeline: str,
        slots: list[Slot],
        *,
        max_parallel: int = 4,
        code_hash: str = "",
        timeout: float = 3600.0,
        retry_failed: bool = False,
        on_update: Callable[[Slot, RunState | None, str], None] | None = None,
    ) -> dict[str, tuple[str, RunState | None]]:
        """One run per slot, at most `max_parallel` at a time; {slot's run id: (outcome, state)}.

        Outcomes: `completed` / `failed` (ran now), `skipped` (it had completed before: nothing is loaded twice),
        `failed earlier` (its last attempt failed; with `retry_failed` it runs again instead, as the next attempt
        `<run id>-retry<n>`, see `retry_run_id`). Each slot's run id is the one the scheduler gives it.
        """
        known = {r.run_id: r for r in await self.runs(pipeline)}
        gate = asyncio.Semaphore(max(1, max_parallel))
        out: dict[str, tuple[str, RunState | None]] = {}

        def tell(slot: Slot, state: RunState | None, outcome: str) -> None:
            if on_update is not None:
                on_update(slot, state, outcome)

        async def one(slot: Slot) -> None:
            attempts = slot_attempts(slot.run_id, known.values())
            latest = attempts[-1] if attempts else None
            if latest is not None and latest.status not in ("completed", "failed"):
                # the projection trails the log by a fold: ask the log itself before requesting the run again
                latest = await self.run_state(pipeline, latest.run_id) or latest
                attempts[-1] = latest
            done = next((a for a in attempts if a.status == "completed"), None)
            if done is not None:
                out[slot.run_id] = ("skipped", done)
                tell(slot, done, "skipped")
                return
            run_id = latest.run_id if latest is not None else slot.run_id
            if latest is not None and latest.status == "failed":
                if not retry_failed:
                    out[slot.run_id] = ("failed earlier", latest)
                    tell(slot, latest, "failed earlier")
                    return
                run_id = retry_run_id(slot.run_id, attempts)
            async with gate:
                await self.request_run(
                    pipeline,
                    run_id=run_id,
                    trigger="backfill",
                    code_hash=code_hash,
                    data_interval_start=slot.start,
                    data_interval_end=slot.end,
                )
                state = await self.wait(
                    pipeline, run_id, timeout=timeout, on_event=lambda ev, st: tell(slot, st, "running")
                )
            out[slot.run_id] = (state.status, state)
            tell(slot, state, state.status)

        await asyncio.gather(*(one(s) for s in slots))
        return out


def wait_message(
    pipeline: str,
    run_id: str,
    timeout: float,
    state: RunState | None,
    last: tuple[Event, float] | None,
    nats_down: str | None,
) -> str:
    """What a wait that gave up says: what it waited for, the last event it saw (and when), and NATS when it is
    down (`nats_down`: its URL)."""
    if state is None or last is None:
        seen = f"no event of run {run_id} in {timeout:.0f} s (was it requested? `jetl status {pipeline}`)"
    else:
        settled = sum(1 for b in state.batches.values() if b.outcome != "pending")
        expected = "?" if state.expected_batches is None else str(state.expected_batches)
        ago = time.monotonic() - last[1]
        seen = (
            f"run {run_id} did not finish within {timeout:.0f} s; last seen: {last[0].type} {settled}/{expected} "
            f"batches settled, {ago:.0f} s ago (status {state.status}, {state.extracted} extracted, {state.loaded} "
            "loaded)"
        )
    return seen if nats_down is None else f"{seen}; NATS at {nats_down} does not answer"


RETRY = "-retry"


def slot_attempts(run_id: str, runs: Iterable[RunState]) -> list[RunState]:
    """The runs of one schedule slot, first attempt first: its own run id, then `<run id>-retry<n>` by n."""

    def attempt(r: RunState) -> int | None:
        if r.run_id == run_id:
            return 0
        n = r.run_id.removeprefix(run_id + RETRY)
        return int(n) if r.run_id.startswith(run_id + RETRY) and n.isdigit() else None

    numbered = [(n, r) for r in runs if (n := attempt(r)) is not None]
    return [r for _, r in sorted(numbered, key=lambda x: x[0])]


def retry_run_id(run_id: str, attempts: list[RunState]) -> str:
    """The next attempt of a slot whose attempts all failed: `<run id>-retry<n>`, n counting the failures, so that
    two people retrying at once make one run, and a retry that fails too is followed by the next."""
    failed = sum(1 for a in attempts if a.status == "failed")
    return f"{run_id}{RETRY}{failed}"


@dataclass
class DestinationCount:
    """Rows in a pipeline's destination, as its loader counted them."""

    pipeline: str
    destination: str
    total: int | None
    """None: the loader cannot count (the console)."""
    by_run: dict[str, int] | None = None
    """Rows per run id, where the loader keeps lineage."""
    exact: bool = True
    """False for tables that merge rows by key (a key's older rows vanish as parts merge)."""
    key: list[str] = field(default_factory=list)
    """The pipeline's primary key (empty: append mode)."""
    keys: int | None = None
    """Distinct primary keys in the destination (None without a key)."""


def dead_letter_status(letters: list[tuple[int, DeadLetter]], runs: list[RunState]) -> dict[int, str | None]:
    """Per JETL_DLQ sequence, why a redrive must not take it (None: it may).

    - `unreadable`: input that could not be read as a record (a malformed line): there is no record to send.
    - `too large`: a record over the server's max_payload (kept by reference): no batch can carry it.
    - `redriven by <run>`: a redrive that has not failed took it already.
    - `shadow <run>`: rejected by a replay into a shadow (a trial for --diff), not by a run that loads.
    - `superseded by <run>`: a replay has processed that batch again (and dead-lettered what it rejects itself).
    """
    taken = {s: r.run_id for r in runs if r.redrive and r.status != "failed" for s in r.redrive}
    shadows = {r.run_id for r in runs if r.shadow}
    superseded: dict[str, str] = {}
    for r in runs:
        if r.trigger == "replay" and r.parent_run_id and not r.shadow:
            for b in r.batches.values():
                if b.outcome != "pending":
                    superseded[f"{r.parent_run_id}/{b.seq:06d}"] = r.run_id
    out: dict[int, str | None] = {}
    for seq, dl in letters:
        if dl.error_type == OVERSIZED_RECORD:
            out[seq] = "too large"
        elif dl.stage == "extract" or dl.error_type == MALFORMED_INPUT:
            out[seq] = "unreadable"
        elif seq in taken:
            out[seq] = f"redriven by {taken[seq]}"
        elif dl.run_id in shadows:
            out[seq] = f"shadow {dl.run_id}"
        elif dl.batch_id in superseded:
            out[seq] = f"superseded by {superseded[dl.batch_id]}"
        else:
            out[seq] = None
    return out


def redrivable(letters: list[tuple[int, DeadLetter]], runs: list[RunState], *, run_id: str | None = None) -> list[int]:
    """The JETL_DLQ sequences a redrive should take (see `dead_letter_status`), of `run_id` when given."""
    status = dead_letter_status(letters, runs)
    return [seq for seq, dl in letters if status[seq] is None and (run_id is None or dl.run_id == run_id)]


def redrive_run_id(pipeline: str, seqs: list[int], runs: list[RunState]) -> str:
    """`<pipeline>-rd<hash>`, from the dead letters taken and how often that same set failed before (so a failed
    redrive can be tried again, while two concurrent identical redrives are one run)."""
    import hashlib

    failed = sum(1 for r in runs if r.status == "failed" and sorted(r.redrive) == sorted(seqs))
    digest = hashlib.sha256(f"{','.join(map(str, sorted(seqs)))}#{failed}".encode()).hexdigest()[:12]
    return f"{pipeline}{REDRIVE_TAG}{digest}"


REDRIVE_TAG = "-rd"
"""Run ids of redrives are `<pipeline>-rd<hash>` (`redrive_run_id`)."""
REPLAY_TAG = "-rp"
"""Run ids of replays are `<pipeline>-rp<stamp>` (`JetlClient.replay`)."""


async def status_runs(kv: Any, pipeline: str | None = None) -> list[RunState]:
    """The only runs `dead_letter_status` looks at: redrives and replays, found by their run ids, so judging a page
    of dead letters reads a handful of run states, not every run kept."""
    out: list[RunState] = []
    for key in await bucket_keys(kv, f"run.{pipeline}.>" if pipeline else "run.>"):
        _, pipe, run_id = key.split(".", 2)
        if run_id.startswith((f"{pipe}{REDRIVE_TAG}", f"{pipe}{REPLAY_TAG}")):
            state = await get_run(kv, pipe, run_id)
            if state is not None:
                out.append(state)
    return out
