"""The ledger as data: per run, extracted = loaded + rejected + filtered, beside what the destination holds, and
one run's steps from the event log. All pure: callers read the runs, events and destination count first.

`jetl counts` and `jetl audit` print these; a dashboard can show the same rows.
"""

from __future__ import annotations

from typing import Any

from jetl.events import Event
from jetl.projection import RunState, expected_rows


def audit_rows(events: list[Event]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(run-level steps, one row per batch with each stage's step) from a run's events, in log order."""
    run_steps: list[dict[str, Any]] = []
    batches: dict[str, dict[str, Any]] = {}
    start = events[0].at if events else None
    for ev in events:
        step: dict[str, Any] = {
            "event": ev.type,
            "at": ev.at,
            "offset_s": (ev.at - start).total_seconds() if start else 0.0,
            "service": ev.service,
            "instance": ev.instance,
            "code_hash": ev.code_hash,
        }
        batch_id = getattr(ev, "batch_id", None)
        if batch_id is None:
            extra = {
                k: v
                for k, v in ev.model_dump(mode="json").items()
                if k
                in (
                    "trigger",
                    "batches",
                    "records",
                    "rejected",
                    "extracted",
                    "loaded",
                    "filtered",
                    "error",
                    "parent_run_id",
                    "cursor",
                    "action",
                    "previous",
                    "by",
                    "reason",
                )
                and v not in (None, "", [])
            }
            run_steps.append(step | {"detail": extra})
            continue
        row = batches.setdefault(batch_id, {"batch_id": batch_id, "seq": getattr(ev, "seq", 0)})
        stage = ev.type.split(".", 1)[1]
        detail = {
            k: v
            for k, v in ev.model_dump(mode="json").items()
            if k in ("records", "records_in", "records_out", "rejected", "filtered", "stage", "reason", "scope")
        }
        row.setdefault(stage, []).append(step | {"detail": detail})
    return run_steps, sorted(batches.values(), key=lambda b: b["seq"])


def ledger_report(runs: list[RunState], by_run: dict[str, int] | None) -> list[dict[str, Any]]:
    """Per run: the ledger, and the rows it should have in the destination beside the rows it has there."""
    expected = expected_rows(runs)
    out: list[dict[str, Any]] = []
    for r in runs:
        c: dict[str, Any] = dict(r.counts())
        out.append(
            c
            | {
                "run_id": r.run_id,
                "trigger": r.trigger,
                "status": r.status,
                "reconciles": r.reconciles,
                "shadow": r.shadow,
                "parent_run_id": r.parent_run_id,
                "expected_in_destination": expected[r.run_id],
                "in_destination": None if by_run is None else by_run.get(r.run_id, 0),
            }
        )
    return out


def ledger_verdict(rows: list[dict[str, Any]], dest: Any) -> dict[str, Any]:
    """Does every finished run reconcile, and does the destination hold what the ledger says it should?

    With rows per run (a loader that keeps lineage) each finished run is compared, and rows of runs the ledger does
    not know (loaded before lineage, or runs whose events expired) are reported as stray; runs in flight are left
    out. Without, the totals are compared once nothing is in flight. Merge tables are not compared (None): a key's
    older rows vanish as parts merge.
    """
    settled = [r for r in rows if r["status"] in ("completed", "failed")]
    unreconciled = [r["run_id"] for r in settled if not r["reconciles"]]
    mismatched: list[str] = []
    stray: dict[str, int] = {}
    matches: bool | None = None
    if dest is not None and dest.exact and dest.total is not None:
        if dest.by_run is not None:
            mismatched = [r["run_id"] for r in settled if r["in_destination"] != r["expected_in_destination"]]
            known = {r["run_id"] for r in rows}
            stray = {run: n for run, n in dest.by_run.items() if run not in known and n}
            matches = not mismatched and not stray
        elif len(settled) == len(rows):
            matches = dest.total == sum(r["expected_in_destination"] for r in rows)
    return {
        "reconciles": not unreconciled,
        "unreconciled_runs": unreconciled,
        "destination_matches": matches,
        "mismatched_runs": mismatched,
        "stray_rows": stray,
    }


LEDGER = ("extracted", "loaded", "rejected", "filtered")
RESENT = ("replay", "redrive")
"""Triggers of runs that send the log's records through again: their counts are theirs, not the pipeline's."""


def ledger_totals(rows: list[dict[str, Any]], dest: Any) -> dict[str, Any]:
    """The ledger of the pipeline's own runs (extracted, loaded, rejected, filtered), with the replays' and the
    redrives' kept apart (they read records the pipeline's runs already counted: a record rejected, then redriven
    and rejected again, is one rejected record of the pipeline), beside the destination's own total and the rows
    it means now (`current`: one per key, deletes applied)."""

    def summed(of: list[dict[str, Any]]) -> dict[str, int]:
        return {"runs": len(of), **{k: sum(r[k] for r in of) for k in LEDGER}}

    own = [r for r in rows if r["trigger"] not in RESENT]
    return {
        **summed(own),
        "replays": summed([r for r in rows if r["trigger"] == "replay"]),
        "redrives": summed([r for r in rows if r["trigger"] == "redrive"]),
        "expected_in_destination": sum(r["expected_in_destination"] for r in rows),
        "in_destination": dest.total if dest else None,
        "current_in_destination": dest.current if dest else None,
    }
