"""A backfill: one run per schedule slot (`run_slots`, behind `JetlClient.backfill`), under the run id the
scheduler gives the slot; a slot whose attempts all failed runs again as `<run id>-retry<n>`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypedDict

from jetl.messages.models import RunRequest
from jetl.projection import RunState
from jetl.schedule import Slot

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


class BackfillOptions(TypedDict, total=False):
    """How a backfill runs its slots (`run_slots`' keywords)."""

    max_parallel: int
    """Runs at a time (4)."""
    code_hash: str
    """The pipeline code's hash, stamped on each run."""
    timeout: float
    """Seconds to wait for each run (3600)."""
    retry_failed: bool
    """Run a slot whose attempts all failed again, as its next attempt."""
    on_update: Callable[[Slot, RunState | None, str], None] | None
    """Called with (slot, state, outcome) as each run moves."""


class RunClient(Protocol):
    """What a backfill needs of a connected client (`jetl.ops.client.JetlClient`): its run list, a run's state from the
    log, and requesting a run and waiting for it."""

    @property
    def runs(self) -> Callable[..., Awaitable[list[RunState]]]: ...

    @property
    def run_state(self) -> Callable[[str, str], Awaitable[RunState | None]]: ...

    @property
    def request_run(self) -> Callable[..., Awaitable[RunRequest]]: ...

    @property
    def wait(self) -> Callable[..., Awaitable[RunState]]: ...


async def run_slots(
    client: RunClient,
    pipeline: str,
    slots: list[Slot],
    *,
    max_parallel: int = 4,
    code_hash: str = "",
    timeout: float = 3600.0,
    retry_failed: bool = False,
    on_update: Callable[[Slot, RunState | None, str], None] | None = None,
) -> dict[str, tuple[str, RunState | None]]:
    """One run per slot, at most `max_parallel` at a time; {slot's run id: (outcome, state)} (see
    `JetlClient.backfill`)."""
    known = {r.run_id: r for r in await client.runs(pipeline)}
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
            latest = await client.run_state(pipeline, latest.run_id) or latest
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
            await client.request_run(
                pipeline,
                run_id=run_id,
                trigger="backfill",
                code_hash=code_hash,
                data_interval_start=slot.start,
                data_interval_end=slot.end,
            )
            state = await client.wait(
                pipeline, run_id, timeout=timeout, on_event=lambda ev, st: tell(slot, st, "running")
            )
        out[slot.run_id] = (state.status, state)
        tell(slot, state, state.status)

    await asyncio.gather(*(one(s) for s in slots))
    return out
