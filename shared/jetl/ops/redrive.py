"""Which dead letters a redrive may take (`dead_letter_status`), and the run ids of redrives and replays.

A redrive's run id is derived from the letters it takes, so two people redriving at once make one run; the status
of a letter is judged from the redrives and replays alone (`status_runs`), never from every run kept.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from jetl.messages.deadletter import MALFORMED_INPUT, OVERSIZED_RECORD, DeadLetter
from jetl.projection import RunState
from jetl.state import bucket_keys, get_run


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
    failed = sum(1 for r in runs if r.status == "failed" and sorted(r.redrive) == sorted(seqs))
    digest = hashlib.sha256(f"{','.join(map(str, sorted(seqs)))}#{failed}".encode()).hexdigest()[:12]
    return f"{pipeline}{REDRIVE_TAG}{digest}"


REDRIVE_TAG = "-rd"
"""Run ids of redrives are `<pipeline>-rd<hash>` (`redrive_run_id`)."""
REPLAY_TAG = "-rp"
"""Run ids of replays are `<pipeline>-rp<stamp>` (`replay_run_id`)."""


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


def replay_run_id(pipeline: str) -> str:
    """A fresh run id for a replay: `<pipeline>-rp<UTC stamp><random>`."""
    return f"{pipeline}{REPLAY_TAG}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}{secrets.token_hex(2)}"


def replay_conflict(letters: list[tuple[int, DeadLetter]], runs: list[RunState], parent_run_id: str) -> str | None:
    """Why a replay of `parent_run_id` into the destination would load records twice (a dead letter of it that a
    redrive already loaded: "redriven by <run>"), or None."""
    status = dead_letter_status(letters, runs)
    redriven = sorted(
        why
        for seq, dl in letters
        if dl.run_id == parent_run_id and (why := status[seq]) is not None and why.startswith("redriven")
    )
    return redriven[0] if redriven else None
