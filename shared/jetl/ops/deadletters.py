"""Dead letters as data, a page at a time: rows per rejected record, pages of JETL_DLQ by stream sequence, letters
fetched by sequence, and a small summary kept up to date as the stream grows (counts per reason).

`jetl dlq list` prints these rows; the dashboard pages through them without reading the whole stream for a page.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.js.errors import NotFoundError

from jetl import subjects
from jetl.bucket import get_run
from jetl.errors import RecordIssue
from jetl.eventlog import read_from
from jetl.messages.deadletter import DeadLetter, DeadRecord
from jetl.ops.redrive import REPLAY_TAG
from jetl.subjects import Kind

if TYPE_CHECKING:
    from jetl.ops.handle import Handle
    from jetl.runstate import RunState


def redriven_by(why: str | None) -> str | None:
    """The redrive run that took a dead letter, from its `dead_letter_status` (None: no redrive took it)."""
    return why.removeprefix("redriven by ") if why and why.startswith("redriven by ") else None


def letter_rows(seq: int, dl: DeadLetter, why: str | None) -> list[dict[str, Any]]:
    """One row per rejected record of a dead letter (one for a letter without records), with its status: why a
    redrive must not take it (`why`, from `dead_letter_status`) or `redrivable`."""
    return [
        {
            "seq": seq,
            "pipeline": dl.pipeline,
            "run_id": dl.run_id,
            "batch_id": dl.batch_id,
            "stage": dl.stage,
            "scope": dl.scope,
            "error_type": dl.error_type,
            # each record's own reason: the letter's describes its first record only ("... (+1 more)")
            "reason": record_reason(dl, rec),
            "index": rec.get("index"),
            "origin": rec.get("origin"),
            "field": rec.get("field"),
            "message": rec.get("message") or dl.reason,
            "record": rec.get("record"),
            "ref": rec.get("ref") or dl.body_ref,
            "status": why or "redrivable",
            "redriven_by": redriven_by(why),
        }
        for rec in (dl.records or [{}])
    ]


def record_reason(dl: DeadLetter, rec: DeadRecord) -> str:
    """One dead record's reason, as the letter would give it were that record its first (pipeline, origin, field)."""
    index, message = rec.get("index"), rec.get("message")
    if not message:
        return dl.reason
    if index is None:  # input that was never a record: where it was, and why
        return f"pipeline {dl.pipeline!r}: {rec.get('origin') or dl.batch_id}: {message}"
    return RecordIssue(index, rec.get("field") or "", message, rec.get("origin")).describe(dl.pipeline)


def reason_of(dl: DeadLetter, rec: DeadRecord) -> str:
    """What a record was rejected for, without where: the stage, the field and the message (what groups share)."""
    fld = rec.get("field")
    msg = str(rec.get("message") or dl.error_type)
    return f"{dl.stage}: {fld + ': ' if fld else ''}{msg}"[:200]


async def letter_page(
    jc: Handle, pipeline: str | None, start: int, limit: int
) -> tuple[list[tuple[int, DeadLetter]], int | None]:
    """Up to `limit` dead letters from JETL_DLQ sequence `start` on, oldest first, and where the next page starts."""
    dlq = subjects.stream_name(Kind.DLQ)
    msgs = await read_from(jc.conn, dlq, subjects.pattern(Kind.DLQ, pipeline), start, limit + 1)
    page = [(m.metadata.sequence.stream, DeadLetter.read(m.subject, m.data)) for m in msgs[:limit]]
    return page, (msgs[limit].metadata.sequence.stream if len(msgs) > limit else None)


async def letters_at(jc: Handle, seqs: Iterable[int]) -> list[tuple[int, DeadLetter]]:
    """The dead letters at these JETL_DLQ sequences (one direct read each; missing ones are left out)."""
    import asyncio

    js = jc.conn.jetstream()

    async def one(seq: int) -> tuple[int, DeadLetter] | None:
        with contextlib.suppress(NotFoundError):
            msg = await js.get_msg(subjects.stream_name(Kind.DLQ), seq=seq)
            return seq, DeadLetter.read(msg.subject, msg.data)
        return None

    found = await asyncio.gather(*(one(q) for q in sorted(set(seqs))))  # in flight together, in order
    return [x for x in found if x is not None]


@dataclass
class ReasonGroup:
    """Rejected records that share a pipeline and a reason."""

    pipeline: str
    reason: str
    records: int = 0
    seqs: list[int] = field(default_factory=list)
    """The JETL_DLQ sequences of the letters holding them, oldest first."""


@dataclass
class DeadLetterSummary:
    """Counts of JETL_DLQ per pipeline and reason, read once and then only what the stream gained since.

    Kept in memory by a long-running reader (the dashboard): each `refresh` reads at most `step` new letters, so
    a page never waits for the whole stream; `complete` says whether the summary has caught up.

    The letters of a shadow replay (`jetl replay --diff`, a trial that loads nothing) are its run's (`per_run`), and
    counted apart (`shadow_records`), never in the pipeline's counts and reasons: what the trial rejected again is
    its parent's dead letter already, and would count twice.
    """

    last_seq: int = 0
    letters: int = 0
    records: int = 0
    groups: dict[tuple[str, str], ReasonGroup] = field(default_factory=dict)
    per_pipeline: dict[str, int] = field(default_factory=dict)
    """Rejected records per pipeline."""
    per_run: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """The sequences of each (pipeline, run)'s letters."""
    shadow_records: int = 0
    """Rejected records of shadow replays (in none of the counts above but `per_run`)."""
    replays: dict[tuple[str, str], RunState | None] = field(default_factory=dict)
    """Per replay (pipeline, run) whose letters were read, its state (`replay`)."""
    complete: bool = False

    def add(self, seq: int, dl: DeadLetter, *, shadow: bool = False) -> None:
        """Count one letter (`shadow`: of a shadow replay, counted apart)."""
        self.last_seq = max(self.last_seq, seq)
        self.per_run.setdefault((dl.pipeline, dl.run_id), []).append(seq)
        if shadow:
            self.shadow_records += len(dl.records or [{}])
            return
        self.letters += 1
        for rec in dl.records or [{}]:
            g = self.groups.get((dl.pipeline, reason := reason_of(dl, rec)))
            if g is None:
                g = self.groups[(dl.pipeline, reason)] = ReasonGroup(dl.pipeline, reason)
            g.records += 1
            if not g.seqs or g.seqs[-1] != seq:
                g.seqs.append(seq)
            self.records += 1
            self.per_pipeline[dl.pipeline] = self.per_pipeline.get(dl.pipeline, 0) + 1

    async def refresh(self, jc: Handle, step: int = 5_000) -> bool:
        """Read up to `step` letters added since the last refresh; returns whether it has caught up."""
        dlq = subjects.stream_name(Kind.DLQ)
        msgs = await read_from(jc.conn, dlq, subjects.pattern(Kind.DLQ), self.last_seq + 1, step)
        for m in msgs:
            dl = DeadLetter.read(m.subject, m.data)
            self.add(m.metadata.sequence.stream, dl, shadow=await self._shadow(jc, dl))
        self.complete = len(msgs) < step
        return self.complete

    async def _shadow(self, jc: Handle, dl: DeadLetter) -> bool:
        """Whether the letter's run is a shadow replay."""
        state = await self.replay(jc, dl.pipeline, dl.run_id)
        return state is not None and state.shadow

    async def replay(self, jc: Handle, pipeline: str, run_id: str) -> RunState | None:
        """The state of a replay (None for a run that is none): replays are found by their run ids, as
        `jetl.ops.redrive.status_runs` finds them, and each is asked once, of the state bucket, else of the log (a
        replay the tracker has not folded, or whose state expired, is still a shadow or not)."""
        if not run_id.startswith(f"{pipeline}{REPLAY_TAG}"):
            return None
        key = (pipeline, run_id)
        if key not in self.replays:
            state = await get_run(await jc.kv(), pipeline, run_id)
            self.replays[key] = state if state is not None else await jc.run_state(pipeline, run_id)
        return self.replays[key]

    async def judging(self, jc: Handle, letters: list[tuple[int, DeadLetter]], runs: list[RunState]) -> list[RunState]:
        """`runs` (`status_runs`) and the replays of these letters missing from them: what `dead_letter_status`
        judges the letters by, so a shadow's letter reads as the shadow's even before its state is folded."""
        known = {(r.pipeline, r.run_id) for r in runs}
        missing = {(dl.pipeline, dl.run_id) for _, dl in letters} - known
        found = [await self.replay(jc, *key) for key in sorted(missing)]
        return runs + [st for st in found if st is not None]

    def top(self, pipeline: str | None = None, n: int = 50) -> list[ReasonGroup]:
        """The largest groups (of one pipeline, or all)."""
        chosen = [g for g in self.groups.values() if pipeline is None or g.pipeline == pipeline]
        return sorted(chosen, key=lambda g: -g.records)[:n]
