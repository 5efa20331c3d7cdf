"""Commands over the event log: status, audit, counts, backfill, replay, dlq.

Everything shown here is folded from JETL_EVENTS (the run state is a projection, never a second truth), except the
destination's own row count, which only the loader service can give (it alone opens the destination).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import typer
from rich.table import Table

from jetl.cli._app import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    app,
    console,
    err_console,
    fail,
    follow,
    progress,
    run_async,
    settings,
)
from jetl.cli.commands_run import counts_table, state_json
from jetl.errors import ConfigError, JetlError
from jetl.events import Event
from jetl.projection import RunState, expected_rows
from jetl.protocols import Diff

dlq_app = typer.Typer(help="Dead letters: list rejected records with their reasons, redrive them after a fix.")
app.add_typer(dlq_app, name="dlq")


def _print_json(data: Any) -> None:
    print(orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode())


@contextmanager
def _checks() -> Iterator[None]:
    """Argument and pipeline checks before anything runs: a JetlError is one line and its exit code, via fail()."""
    try:
        yield
    except JetlError as exc:
        fail(exc)


def _client() -> Any:
    from jetl.client import JetlClient

    return JetlClient(settings())


def _pipeline(name: str, *, required: bool) -> Any:
    """The pipeline from the local pipelines folder (schedule, code hash); None when optional and not found."""
    from jetl.registry import get_pipeline

    try:
        return get_pipeline(name)
    except JetlError:
        if required:
            raise
        return None


def _when(text: str | None, what: str) -> datetime | None:
    """An ISO date or time; naive means UTC."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {text!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T06:00)") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _stamp(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _duration(st: RunState) -> str:
    if st.started_at is None:
        return "-"
    end = st.finished_at or datetime.now(UTC)
    return f"{(end - st.started_at).total_seconds():.1f}s"


# --- status ---------------------------------------------------------------------------------------------------------


def _notes(st: RunState) -> str:
    notes = []
    if st.parent_run_id:
        notes.append(f"of {st.parent_run_id}")
    if st.shadow:
        notes.append("shadow")
    if st.redrive:
        notes.append(f"{len(st.redrive)} dead letter(s)")
    if st.error:
        notes.append(st.error[:60])
    return ", ".join(notes)


@app.command()
def status(
    pipeline: str = typer.Argument(None, help="Only this pipeline's runs."),
    limit: int = typer.Option(20, help="How many runs, newest first."),
    rebuild: bool = typer.Option(False, "--rebuild", help="First refold every run state from the event log."),
    json_out: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """List recent runs: status, timings and the ledger, folded from the event log.

    --rebuild drops the folded states and folds JETL_EVENTS again (safe while services run).

    Example: jetl status orders --limit 5
    """

    async def _go() -> tuple[int | None, list[RunState]]:
        async with _client() as jc:
            n = None
            if rebuild:
                from jetl.eventlog import rebuild as refold

                n = await refold(jc.conn, pipeline)
            return n, (await jc.runs(pipeline))[:limit]

    refolded, runs = run_async(_go())
    if json_out:
        _print_json([state_json(r) | {"requested_at": r.requested_at, "shadow": r.shadow} for r in runs])
        return
    if refolded is not None:
        console.print(f"rebuilt the run state from {refolded} event(s)")
    t = Table(title=f"runs of {pipeline}" if pipeline else "runs")
    for col in (
        "run",
        "trigger",
        "status",
        "requested",
        "took",
        "extracted",
        "loaded",
        "rejected",
        "filtered",
        "ledger",
        "notes",
    ):
        t.add_column(col, justify="right" if col in ("extracted", "loaded", "rejected", "filtered") else "left")
    colors = {"completed": "green", "failed": "red", "running": "yellow", "requested": "dim"}
    for r in runs:
        c = r.counts()
        t.add_row(
            r.run_id if pipeline else f"{r.pipeline}/{r.run_id}",
            r.trigger,
            f"[{colors[r.status]}]{r.status}[/]",
            _stamp(r.requested_at),
            _duration(r),
            *(str(c[k]) for k in ("extracted", "loaded", "rejected", "filtered")),
            "ok" if r.reconciles else "[red]NO[/red]",
            _notes(r),
        )
    console.print(t if runs else "no runs yet")


# --- audit ----------------------------------------------------------------------------------------------------------


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


def _step_text(steps: list[dict[str, Any]] | None, fmt: Callable[[dict[str, Any]], str]) -> str:
    if not steps:
        return "[dim]-[/dim]"
    s = steps[-1]
    return f"{fmt(s['detail'])}  [dim]+{s['offset_s']:.2f}s {s['instance']} {s['code_hash'] or '?'}[/dim]"


@app.command()
def audit(
    run_id: str = typer.Argument(..., help="The run id (see `jetl status`)."),
    pipeline: str = typer.Option(None, help="The run's pipeline (found from the log when omitted)."),
    json_out: bool = typer.Option(False, "--json", help="Print the timeline as JSON."),
) -> None:
    """Print one run's timeline from the event log, batch by batch, with instance and code hash at each step.

    Run-level steps first, then one row per batch (extracted, transformed, loaded or rejected), each step with
    the service instance that did it and the pipeline code hash it ran; then the run's ledger.

    Example: jetl audit orders-20261125T0000Z
    """

    async def _go() -> list[Event]:
        async with _client() as jc:
            events: list[Event] = await jc.events(run_id, pipeline)
            return events

    events = run_async(_go())
    if not events:
        err_console.print(f"[red]error:[/red] no events for run {run_id!r} (see `jetl status`)")
        raise typer.Exit(EXIT_USAGE)
    from jetl.projection import fold

    state: RunState | None = None
    for ev in events:
        state = fold(state, ev)
    assert state is not None
    run_steps, batches = audit_rows(events)
    hashes = sorted({ev.code_hash for ev in events if ev.code_hash})
    if json_out:
        _print_json({"run": state_json(state), "code_hashes": hashes, "steps": run_steps, "batches": batches})
        return
    console.print(
        f"[bold]{state.pipeline} {state.run_id}[/bold]: {state.status}, trigger {state.trigger}"
        + (f", parent {state.parent_run_id}" if state.parent_run_id else "")
        + (
            f", interval {_stamp(state.data_interval_start)} .. {_stamp(state.data_interval_end)}"
            if state.data_interval_start
            else ""
        )
    )
    t = Table(title="run")
    for col in ("+s", "event", "detail", "service@instance", "code"):
        t.add_column(col)
    for s in run_steps:
        detail = " ".join(f"{k}={v}" for k, v in s["detail"].items())
        t.add_row(f"{s['offset_s']:.2f}", s["event"], detail, f"{s['service']}@{s['instance']}", s["code_hash"])
    console.print(t)
    b = Table(title=f"batches ({len(batches)})")
    for col in ("batch", "extracted", "transformed", "loaded / rejected"):
        b.add_column(col)
    for row in batches:
        end = row.get("loaded") or row.get("rejected")
        b.add_row(
            row["batch_id"],
            _step_text(row.get("extracted"), lambda d: f"{d.get('records')}"),
            _step_text(
                row.get("transformed"),
                lambda d: (
                    f"{d.get('records_in')}->{d.get('records_out')} rej={d.get('rejected')} filt={d.get('filtered')}"
                ),
            ),
            _step_text(
                end,
                lambda d: (
                    f"loaded {d.get('records')}"
                    if "stage" not in d
                    else f"[red]{d.get('stage')} {d.get('scope')}: {d.get('records')}[/red]"
                ),
            ),
        )
    console.print(b)
    if len(hashes) > 1:
        console.print(f"[yellow]the pipeline code changed during this run: {', '.join(hashes)}[/yellow]")
    console.print(counts_table(state, title="ledger"))


# --- counts ---------------------------------------------------------------------------------------------------------


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


@app.command()
def counts(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    limit: int = typer.Option(50, help="How many runs to list (the totals cover all of them)."),
    json_out: bool = typer.Option(False, "--json", help="Print the ledger as JSON."),
) -> None:
    """The ledger of a pipeline, per run and in total, beside the destination's own row count.

    Per run: extracted = loaded + rejected + filtered, the rows the run should have in the destination (replays
    supersede their parent's batches; shadow runs have none) and the rows it has there, counted by the loader
    service. Exits 1 when something does not reconcile, 3 when the loader cannot be asked.

    Example: jetl counts orders
    """
    from jetl.client import DestinationCount

    async def _go() -> tuple[list[RunState], DestinationCount | None, str | None]:
        async with _client() as jc:
            runs: list[RunState] = await jc.runs(pipeline)
            try:
                return runs, await jc.destination_count(pipeline), None
            except JetlError as exc:
                return runs, None, str(exc)

    runs, dest, dest_error = run_async(_go())
    rows = ledger_report(runs, dest.by_run if dest else None)
    verdict = ledger_verdict(rows, dest)
    mismatched = verdict["mismatched_runs"]
    expected_total = sum(r["expected_in_destination"] for r in rows)
    totals = {
        "runs": len(rows),
        **{k: sum(r[k] for r in rows) for k in ("extracted", "loaded", "rejected", "filtered")},
        "expected_in_destination": expected_total,
        "in_destination": dest.total if dest else None,
    }
    if json_out:
        _print_json(
            {
                "pipeline": pipeline,
                "destination": dest.destination if dest else None,
                "destination_error": dest_error,
                "totals": totals,
                "verdict": verdict,
                "runs": rows[:limit],
            }
        )
    else:
        t = Table(title=f"ledger of {pipeline}")
        for col in (
            "run",
            "trigger",
            "status",
            "extracted",
            "loaded",
            "rejected",
            "filtered",
            "ledger",
            "expected rows",
            "in destination",
        ):
            t.add_column(col, justify="left" if col in ("run", "trigger", "status") else "right")
        for r in rows[:limit]:
            here = "-" if r["in_destination"] is None else str(r["in_destination"])
            if r["run_id"] in mismatched:
                here = f"[red]{here}[/red]"
            t.add_row(
                r["run_id"],
                r["trigger"] + (" (shadow)" if r["shadow"] else ""),
                r["status"],
                *(str(r[k]) for k in ("extracted", "loaded", "rejected", "filtered")),
                "ok" if r["reconciles"] else "[red]NO[/red]",
                str(r["expected_in_destination"]),
                here,
            )
        t.add_section()
        t.add_row(
            "total",
            "",
            f"{len(rows)} runs",
            *(str(totals[k]) for k in ("extracted", "loaded", "rejected", "filtered")),
            "ok" if verdict["reconciles"] else "[red]NO[/red]",
            str(expected_total),
            "-" if totals["in_destination"] is None else str(totals["in_destination"]),
        )
        console.print(t)
        if dest is not None:
            console.print(f"destination: {dest.destination}")
            if not dest.exact:
                console.print(
                    "[dim]merge table: a key's older rows vanish as parts merge; counts are not compared[/dim]"
                )
        else:
            err_console.print(f"[yellow]destination count unavailable:[/yellow] {dest_error}")
    if verdict["stray_rows"] and not json_out:
        console.print(f"[red]rows of runs the ledger does not know:[/red] {verdict['stray_rows']}")
    if not verdict["reconciles"] or verdict["destination_matches"] is False:
        raise typer.Exit(EXIT_FAILED)
    if dest is None:
        raise typer.Exit(EXIT_UNAVAILABLE)


# --- backfill -------------------------------------------------------------------------------------------------------


@app.command()
def backfill(
    pipeline: str = typer.Argument(..., help="Pipeline name (it needs a schedule)."),
    start: str = typer.Option(..., "--start", help="First interval start, ISO (naive = UTC): 2026-11-01."),
    end: str = typer.Option(..., "--end", help="Intervals starting before this, ISO: 2026-11-08."),
    max_parallel: int = typer.Option(4, "--max-parallel", min=1, help="Runs in flight at once."),
    timeout: float = typer.Option(3600, help="Seconds to wait for each run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list the intervals and run ids."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Run the intervals whose last attempt failed again (as <run id>-retry<n>)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one line per interval as JSON."),
) -> None:
    """Run a pipeline once per schedule interval in [start, end), with the run ids the scheduler would use.

    Running the same backfill again loads nothing twice: completed run ids are skipped, and a request that is still
    queued is deduplicated by JetStream. An interval whose run failed stays `failed earlier` until --retry-failed
    runs it again, under the next attempt's run id (`<run id>-retry1`, then -retry2 if that fails too; two people
    retrying at once make one run). Each run's extractors get the interval as data_interval_start/end.
    Runs in parallel suit extractors that read by interval; a pipeline that keeps a cursor (files already loaded,
    a high-water mark) runs one interval at a time whatever --max-parallel says, since runs in flight at once would
    all start from the same cursor.

    Example: jetl backfill daily_sales --start 2026-11-01 --end 2026-11-08 --max-parallel 2 --retry-failed
    """
    from jetl.schedule import Slot, backfill_slots

    with _checks():
        p = _pipeline(pipeline, required=True)
        lo, hi = _when(start, "--start"), _when(end, "--end")
        assert lo is not None and hi is not None
        if p.schedule is None:
            raise ConfigError(f"pipeline {pipeline!r} has no schedule: a backfill splits time by its intervals")
        if hi <= lo:
            raise ConfigError("--end must be after --start")
        slots = backfill_slots(p.name, p.schedule, lo, hi)
        if p.keeps_cursor and max_parallel > 1:  # its runs must not overlap: the extractor would refuse them
            err_console.print(f"{pipeline} keeps a cursor: its runs go one at a time (--max-parallel 1)")
            max_parallel = 1
    if dry_run or not slots:
        if json_out:
            _print_json([{"run_id": s.run_id, "start": s.start, "end": s.end} for s in slots])
        else:
            for s in slots:
                console.print(f"{s.run_id}  {_stamp(s.start)} .. {_stamp(s.end)}")
            console.print(f"{len(slots)} interval(s)")
        return

    async def _go(update: Callable[..., None]) -> dict[str, tuple[str, RunState | None]]:
        finished: dict[str, str] = {}
        loaded: dict[str, int] = {}

        def on_update(slot: Slot, st: RunState | None, outcome: str) -> None:
            if st is not None:
                loaded[slot.run_id] = st.loaded
            if outcome != "running":
                finished[slot.run_id] = outcome
            failed = sum(1 for o in finished.values() if "failed" in o)
            update(completed=len(finished), info=f"loaded={sum(loaded.values())} failed={failed}")

        async with _client() as jc:
            result: dict[str, tuple[str, RunState | None]] = await jc.backfill(
                p.name,
                slots,
                max_parallel=max_parallel,
                code_hash=p.code_hash,
                timeout=timeout,
                retry_failed=retry_failed,
                on_update=on_update,
            )
            return result

    with progress(not json_out, f"backfill {pipeline}", len(slots)) as update:
        result = run_async(_go(update))
    rows: list[dict[str, Any]] = []
    for s in slots:
        outcome, st = result[s.run_id]
        rows.append(
            {
                "run_id": st.run_id if st is not None else s.run_id,  # the attempt that ran (or last failed)
                "slot_run_id": s.run_id,
                "start": s.start,
                "end": s.end,
                "outcome": outcome,
                **(st.counts() if st is not None and outcome != "skipped" else {}),
            }
        )
    if json_out:
        _print_json(rows)
    else:
        t = Table(title=f"backfill {pipeline}: {len(slots)} interval(s)")
        for col in ("run", "interval", "outcome", "extracted", "loaded", "rejected"):
            t.add_column(col)
        for r in rows:
            t.add_row(
                r["run_id"],
                f"{_stamp(r['start'])} .. {_stamp(r['end'])}",
                r["outcome"],
                *(str(r.get(k, "")) for k in ("extracted", "loaded", "rejected")),
            )
        console.print(t)
    if any("failed" in r["outcome"] for r in rows):
        raise typer.Exit(EXIT_FAILED)


# --- replay ---------------------------------------------------------------------------------------------------------


def diff_json(d: Diff) -> dict[str, Any]:
    """A diff for --json output."""
    return {
        "key": d.key,
        "added": d.added,
        "removed": d.removed,
        "changed": d.changed,
        "unchanged": d.unchanged,
        "samples": d.samples,
    }


@app.command()
def replay(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    run: list[str] = typer.Option(None, "--run", help="Run id to replay (repeatable)."),
    since: str = typer.Option(None, "--since", help="Replay every completed run requested at or after this (ISO)."),
    until: str = typer.Option(None, "--until", help="... and before this (ISO)."),
    diff: bool = typer.Option(False, "--diff", help="Load into a shadow and report rows added/removed/changed."),
    keep_shadow: bool = typer.Option(False, "--keep-shadow", help="With --diff: keep the shadow table/folder."),
    sample: int = typer.Option(10, "--sample", min=0, help="With --diff: how many keys to show per kind."),
    timeout: float = typer.Option(600, help="Seconds to wait for each replay."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Replay runs from their raw batches through the current transformers and loader, without re-extracting.

    Each replay reads the parent run's raw batches back out of JETL_RAW and is a new run linked to its parent.

    Without --diff each replayed batch replaces its parent batch in the destination (for append and merge tables
    alike, rows the new code drops go too). With --diff nothing touches the real destination: rows go to a shadow,
    are compared with what the parent loaded (by the table's order_by key), and the shadow is dropped.

    Example: jetl replay orders --run orders-20261125T0000Z --diff
    """
    from jetl.protocols import LineageLoader

    with _checks():
        if not run and since is None and until is None:
            raise ConfigError("name a run (--run RUN) or a time range (--since/--until)")
        lo, hi = _when(since, "--since"), _when(until, "--until")
        p = _pipeline(pipeline, required=False)
        if diff and p is not None and not isinstance(p.loader, LineageLoader):
            raise ConfigError(f"pipeline {pipeline!r}: {p.loader!r} cannot load a shadow, so --diff is not possible")

    async def _go(update: Callable[..., None]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with _client() as jc:
            parents = list(run or [])
            if lo is not None or hi is not None:
                for r in reversed(await jc.runs(pipeline)):
                    at = r.requested_at or r.started_at
                    if (
                        r.status == "completed"
                        and not r.shadow
                        and at is not None
                        and (lo is None or at >= lo)
                        and (hi is None or at < hi)
                        and r.run_id not in parents
                    ):
                        parents.append(r.run_id)
            if not parents:
                raise ConfigError(f"no completed runs of {pipeline!r} in that range (see `jetl status {pipeline}`)")
            for parent in parents:
                state: RunState = await jc.replay(
                    pipeline,
                    parent,
                    shadow=diff,
                    timeout=timeout,
                    code_hash=p.code_hash if p else "",
                    on_event=follow(update),
                )
                row: dict[str, Any] = {"parent_run_id": parent, **state_json(state)}
                if diff and state.status == "completed":
                    row["diff"] = diff_json(
                        await jc.diff(pipeline, state.run_id, parent, drop=not keep_shadow, sample=sample)
                    )
                out.append(row)
        return out

    with progress(not json_out, f"replay {pipeline}", None) as update:
        rows = run_async(_go(update))
    if json_out:
        _print_json(rows if len(rows) > 1 or not run or len(run) > 1 else rows[0])
    else:
        for r in rows:
            console.print(
                f"replay of [bold]{r['parent_run_id']}[/bold] as {r['run_id']}: {r['status']}, "
                f"extracted {r['extracted']}, loaded {r['loaded']}, rejected {r['rejected']}, "
                f"filtered {r['filtered']}" + (f" [red]{r['error']}[/red]" if r["error"] else "")
            )
            if "diff" in r:
                d = r["diff"]
                console.print(
                    f"  against the parent (key {d['key'] or 'whole rows'}): [green]+{d['added']} added"
                    f"[/green], [red]-{d['removed']} removed[/red], [yellow]~{d['changed']} changed"
                    f"[/yellow], {d['unchanged']} unchanged"
                )
                for kind, keys in d["samples"].items():
                    console.print(f"  {kind}: {', '.join(map(str, keys))}", highlight=False)
    if any(r["status"] != "completed" for r in rows):
        raise typer.Exit(EXIT_FAILED)


# --- dead letters ---------------------------------------------------------------------------------------------------


def _redriven_by(why: str | None) -> str | None:
    return why.removeprefix("redriven by ") if why and why.startswith("redriven by ") else None


@dlq_app.command("list")
def dlq_list(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    run: str = typer.Option(None, "--run", help="Only this run's dead letters."),
    limit: int = typer.Option(200, help="At most this many records."),
    json_out: bool = typer.Option(False, "--json", help="Print one object per rejected record."),
) -> None:
    """List rejected records with their reasons, and whether a redrive may take them.

    One row per record: stage, origin (file:line), field and message, and a status: `redrivable`, or why not
    (`redriven by RUN`, `superseded by RUN` when a replay processed the batch again, `shadow RUN` for a --diff
    trial, `unreadable` for input that could not be read at all).

    Example: jetl dlq list orders --run orders-20261125T0000Z
    """

    async def _go() -> tuple[list[Any], list[RunState]]:
        async with _client() as jc:
            return await jc.dead_letter_log(pipeline), await jc.runs(pipeline)

    from jetl.client import dead_letter_status

    letters, runs = run_async(_go())
    status = dead_letter_status(letters, runs)
    rows = [
        {
            "seq": seq,
            "run_id": dl.run_id,
            "batch_id": dl.batch_id,
            "stage": dl.stage,
            "scope": dl.scope,
            "error_type": dl.error_type,
            "reason": dl.reason,
            "index": rec.get("index"),
            "origin": rec.get("origin"),
            "field": rec.get("field"),
            "message": rec.get("message") or dl.reason,
            "record": rec.get("record"),
            "status": status[seq] or "redrivable",
            "redriven_by": _redriven_by(status[seq]),
        }
        for seq, dl in letters
        if run is None or dl.run_id == run
        for rec in (dl.records or [{}])
    ]
    if json_out:
        _print_json(rows[:limit])
        return
    t = Table(title=f"dead letters of {pipeline}: {len(rows)} record(s)")
    for col in ("dlq#", "run", "stage", "origin", "field", "message", "status"):
        t.add_column(col)
    for r in rows[:limit]:
        t.add_row(
            str(r["seq"]),
            r["run_id"],
            f"{r['stage']}/{r['scope']}",
            r["origin"] or "-",
            r["field"] or "-",
            str(r["message"])[:100],
            r["status"],
        )
    console.print(t if rows else "no dead letters")


@dlq_app.command("redrive")
def dlq_redrive(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    run: str = typer.Option(None, "--run", help="Only this run's dead letters."),
    timeout: float = typer.Option(600, help="Seconds to wait for the redrive run."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Send dead-lettered records back through (after a fix) as a new run with trigger `redrive`.

    Records the transformer rejected go back through the current transformers (from their raw input); batches the
    loader rejected go straight to the loader. Dead letters a redrive already took are never sent twice; unreadable
    input (a malformed line: status `unreadable`) is not sent, since only its source can mend it. Records
    rejected again become new dead letters, and every run's ledger still reconciles.

    Example: jetl dlq redrive orders
    """
    p = _pipeline(pipeline, required=False)

    async def _go(update: Callable[..., None]) -> RunState | None:
        async with _client() as jc:
            state: RunState | None = await jc.redrive(
                pipeline, run_id=run, timeout=timeout, code_hash=p.code_hash if p else "", on_event=follow(update)
            )
            return state

    with progress(not json_out, f"redrive {pipeline}", None) as update:
        state = run_async(_go(update))
    if state is None:
        if json_out:
            _print_json(None)
        else:
            console.print("nothing to redrive")
        return
    if json_out:
        _print_json(state_json(state) | {"dead_letters": state.redrive})
    else:
        console.print(
            counts_table(state, title=f"redrive {state.run_id} of {len(state.redrive)} dead letter(s): {state.status}")
        )
    if state.status != "completed":
        raise typer.Exit(EXIT_FAILED)
