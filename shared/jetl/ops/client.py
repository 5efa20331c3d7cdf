"""A client for people and scripts: request runs, follow them through the event log, read dead letters.

It is the one handle every operator function (`jetl.ops.*`) takes: it owns the NATS connection, the bus (a
FastStream broker, connected on the first publish) and the state bucket. The CLI opens one per command, the
dashboard one per process; tests and notebooks can use it directly:

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
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import Unpack

from jetl import subjects
from jetl.bus import nats_connection, riding_connection
from jetl.errors import ConfigError, TransientError, WaitTimedOut, classify
from jetl.eventlog import read_events, read_stream, tail
from jetl.events import Event, OperatorAction, RunCancelled, RunCompleted, RunFailed, read_event
from jetl.loaders.versions import run_view
from jetl.messages.deadletter import DeadLetter
from jetl.messages.models import RunRequest, Trigger
from jetl.ops.deadletters import letters_at
from jetl.ops.destination import DestinationCount, QueryResult, ask_loader
from jetl.ops.redrive import redrivable, redrive_run_id, replay_conflict, replay_run_id, status_runs
from jetl.projection import RunState, fold
from jetl.protocols import Diff, RunView
from jetl.schedule import Slot
from jetl.settings import JetlSettings
from jetl.state import bucket, get_run, list_runs
from jetl.subjects import Kind
from jetl.topology import require_deployment

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from jetl.bus import Bus
    from jetl.ops.backfill import BackfillOptions
    from jetl.schedule import Slot

REQUEST_RETRY_S = 60.0
"""How long `request_run` keeps sending a run request while NATS is away."""


def manual_run_id(pipeline: str) -> str:
    """A fresh run id for a manual run: `<pipeline>-m<UTC stamp><random>`."""
    return f"{pipeline}-m{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}{secrets.token_hex(2)}"


SETTLE_GRACE_S = 2.0
VERDICT_WAIT_S = 15.0
"""Seconds a client waits for the tracker to fold a run's end (`JetlClient.verdict`), as `jetl runs cancel` does."""
"""How long `JetlClient.wait` keeps reading a failed run's events for its batches to settle."""


class JetlClient:
    """Connected to NATS (plain nats-py for reads, a FastStream broker for publishes, the state bucket).

    `deployed=False` connects to a server without jetl's streams too (`jetl health` reports what is missing);
    otherwise such a server is refused as the wrong one (NoDeployment).
    """

    def __init__(self, settings: JetlSettings | None = None, *, deployed: bool = True) -> None:
        self.settings = settings or JetlSettings()
        self.deployed = deployed
        self.nc: Client | None = None
        self.broker: Any = None
        self._bus: Bus | None = None
        self._bus_lock = asyncio.Lock()
        self._kv: KeyValue | None = None

    async def __aenter__(self) -> JetlClient:
        # fails fast when NATS is down; once connected, rides through a NATS restart (follow resumes, see `follow`)
        self.nc = await riding_connection(self.settings)
        try:
            # a client never declares: a server without jetl's streams is the wrong server, not a place to make them
            if self.deployed:
                await require_deployment(self.nc, self.settings.nats.url)
        except BaseException:
            await self.nc.close()
            raise
        return self

    async def bus(self) -> Bus:
        """The bus for publishing (runs, events): its broker connects on the first call, so a command that only
        reads never imports or connects it."""
        async with self._bus_lock:  # callers in flight together (a backfill's slots) share one broker
            if self._bus is None:
                from jetl.bus import Bus, make_broker

                # the broker's own log lines (a NATS restart: "Connection broken ...") go to stderr through the
                # logging module, never to stdout, where `--json` output is
                broker = make_broker(self.settings.nats, logger=logging.getLogger("jetl.client"))
                self.broker = broker
                await broker.connect()
                self._bus = Bus(broker, "operator")
        return self._bus

    async def __aexit__(self, *exc: object) -> None:
        # Stopping the broker while NATS is away raises (ConnectionReconnectingError, from a drain) and leaves its
        # connection reconnecting, a task that keeps asyncio.run from returning: close every connection outright,
        # and never let closing hide the error being raised.
        conns: list[Any] = [self.nc]
        if self.broker is not None:
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
                await (await self.bus()).request(req, code_hash=code_hash)
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
            ev = read_event(msg.subject, msg.data)
            if ev is not None:  # said by a role that may not say it: the tracker does not believe it either
                yield ev

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
            events = aiter(self.follow(pipeline, run_id))
            try:
                while True:
                    ev = await anext(events)
                    state, last = fold(state, ev), (ev, time.monotonic())
                    if on_event is not None:
                        on_event(ev, state)
                    if isinstance(ev, (RunCompleted, RunFailed, RunCancelled)):
                        break
                if isinstance(ev, RunCancelled) and (judged := await self.verdict(pipeline, run_id)) is not None:
                    # a cancel the tracker folded after it had completed the run is refused: the completion stands,
                    # and its run.completed is on its way to the log (it may come after the cancel there)
                    while judged.status == "completed" and not isinstance(ev, RunCompleted):
                        ev = await anext(events)
                        state, last = fold(state, ev), (ev, time.monotonic())
                        if on_event is not None:
                            on_event(ev, state)
                # run.failed goes on the log before the batch.rejected of the batch that failed it (so the run
                # cannot complete first: `jetl.runtime.stage.reject_batch`): wait a moment for that to settle too
                grace = time.monotonic() + SETTLE_GRACE_S
                while isinstance(ev, (RunFailed, RunCancelled)) and not state.settled and time.monotonic() < grace:
                    try:
                        ev = await asyncio.wait_for(anext(events), grace - time.monotonic())
                    except TimeoutError:
                        break
                    state, last = fold(state, ev), (ev, time.monotonic())
                    if on_event is not None:
                        on_event(ev, state)
                return state
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        try:
            return await asyncio.wait_for(_consume(), timeout)
        except TimeoutError as exc:
            nats_up = await self.nats_answers()
            raise WaitTimedOut(
                wait_message(pipeline, run_id, timeout, state, last, None if nats_up else self.settings.nats.url),
                nats_up=nats_up,
            ) from exc

    async def verdict(self, pipeline: str, run_id: str, timeout: float = VERDICT_WAIT_S) -> RunState | None:
        """The run's state as the tracker folded it, once finished: whichever of a cancel and the run's completion
        the tracker folded first stands (a cancel that reached it after the run completed is refused, the completion
        and its cursor stand). None: the tracker has not finished the run within `timeout` seconds."""
        kv = await self.kv()
        deadline = time.monotonic() + timeout
        while True:
            folded = await get_run(kv, pipeline, run_id)
            if folded is not None and folded.status in ("completed", "failed"):
                return folded
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.2)

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
        return await list_runs(await self.kv(), pipeline)

    async def events(self, run_id: str, pipeline: str | None = None) -> list[Event]:
        """One run's events, in log order (a run id alone finds it under any pipeline)."""
        subject = subjects.pattern(Kind.EVENTS, pipeline, run_id)
        read = [read_event(m.subject, m.data) async for m in read_stream(self.conn, Kind.EVENTS, subject)]
        return [ev for ev in read if ev is not None]

    async def cancel(self, run_id: str, reason: str, pipeline: str | None = None, by: str = "") -> RunState:
        """End an unfinished run by an event (run.cancelled): the tracker folds it as failed, which lets later runs
        of its pipeline past the overlap guard. Raises ConfigError for a run the log does not know, or one that
        completed."""
        if not reason.strip():
            raise ConfigError("a cancellation needs a reason (--reason)", hint="")
        events = await self.events(run_id, pipeline)
        if not events:
            raise ConfigError(f"no events for run {run_id!r}: nothing to cancel (see `jetl status`)", hint="")
        state: RunState | None = None
        for ev in events:
            state = fold(state, ev)
        assert state is not None
        if state.status == "completed":
            raise ConfigError(f"run {run_id} of {state.pipeline} completed: there is nothing to cancel", hint="")
        await (await self.bus()).event(
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
                yield m.metadata.sequence.stream, DeadLetter.read(m.subject, m.data)

    async def ask_loader(self, verb: str, body: dict[str, Any], timeout: float = 60.0) -> Any:
        """Request/reply to the loader service (see `jetl.ops.destination.ask_loader`)."""
        return await ask_loader(self, verb, body, timeout)

    async def destination_count(self, pipeline: str) -> DestinationCount:
        """Rows in the pipeline's destination, counted by the loader (per run where the loader keeps lineage)."""
        return DestinationCount(pipeline=pipeline, **await self.ask_loader("count", {"pipeline": pipeline}))

    async def query(
        self, pipeline: str, sql: str, *, max_rows: int = 100, seconds: float = 10.0, current: bool = True
    ) -> QueryResult:
        """One read-only SELECT over the pipeline's destination, answered by the loader that owns it (a chdb folder
        opens in one process at a time); the table's name reads its current rows unless `current` is False."""
        body = {"pipeline": pipeline, "sql": sql, "max_rows": max_rows, "seconds": seconds, "current": current}
        return QueryResult(**await self.ask_loader("query", body, timeout=seconds + 30))

    async def recent_rows(self, pipeline: str, limit: int = 10, timeout: float = 10.0) -> QueryResult:
        """The newest `limit` current rows of the pipeline's destination (the dashboard's rows view)."""
        return QueryResult(**await self.ask_loader("rows", {"pipeline": pipeline, "limit": limit}, timeout=timeout))

    async def run_view(self, pipeline: str) -> RunView:
        """What reading the pipeline's current rows needs of the run state (replays, incomplete and superseded
        runs): for a destination read directly, not through the loader."""
        return run_view(await self.runs(pipeline))

    async def kv(self) -> KeyValue:
        """The state bucket (run states, cursors), looked up once."""
        if self._kv is None:
            self._kv = await bucket(self.conn)
        return self._kv

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

    async def live_shadows(self, pipeline: str, run_ids: list[str]) -> list[str]:
        """Those of these shadow replays whose shadow the loader still has (a diff drops it unless told to keep it)."""
        live: list[str] = (await self.ask_loader("shadows", {"pipeline": pipeline, "run_ids": run_ids}))["live"]
        return live

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
            raise ConfigError(
                f"no run {parent_run_id!r} of pipeline {pipeline!r} (see `jetl status {pipeline}`)", hint=""
            )
        if parent.expected_batches is None:
            raise ConfigError(
                f"run {parent_run_id!r} never finished extracting ({parent.status}): nothing to replay", hint=""
            )
        if not shadow:
            conflict = replay_conflict(await self.dead_letter_log(pipeline), await self.runs(pipeline), parent_run_id)
            if conflict is not None:
                raise ConfigError(
                    f"run {parent_run_id!r} had dead letters {conflict}: a replay would load those records a "
                    "second time (a replay replaces the parent's batches, not the redrive's). --diff is fine."
                )
        run_id = replay_run_id(pipeline)
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
        if seqs is not None:
            runs = await status_runs(self, pipeline)
            letters = [(q, dl) for q, dl in await letters_at(self, seqs) if dl.pipeline == pipeline]
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
        await (await self.bus()).event(ev)
        return ev

    async def backfill(
        self, pipeline: str, slots: list[Slot], **options: Unpack[BackfillOptions]
    ) -> dict[str, tuple[str, RunState | None]]:
        """One run per slot, at most `max_parallel` at a time; {slot's run id: (outcome, state)}.

        Outcomes: `completed` / `failed` (ran now), `skipped` (it had completed before: nothing is loaded twice),
        `failed earlier` (its last attempt failed; with `retry_failed` it runs again instead, as the next attempt
        `<run id>-retry<n>`, see `retry_run_id`). Each slot's run id is the one the scheduler gives it. The options
        are `jetl.ops.backfill.BackfillOptions`.
        """
        from jetl.ops.backfill import run_slots

        return await run_slots(self, pipeline, slots, **options)


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
