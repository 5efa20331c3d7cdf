"""`jetl run`, `status` and `audit`: request a run and follow it; list runs; one run's timeline.

Everything shown is folded from JETL_EVENTS (the run state is a projection, never a second truth).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, client, follow, load_pipelines, nats_settings, progress, run_async, settings
from jetl.cli._output import EXIT_FAILED, EXIT_USAGE, Rows, console, err_console, print_json, print_table, stamp

if TYPE_CHECKING:
    from rich.table import Table

    from jetl.events import Event
    from jetl.projection import RunState
    from jetl.runsummary import RunSummary


def counts_table(state: RunState, title: str | None = None) -> Table:
    """Per-stage counts of a run, and whether the ledger reconciles."""
    from rich.table import Table

    t = Table(title=title or f"{state.pipeline} {state.run_id}: {state.status}")
    for col in ("extracted", "loaded", "rejected", "filtered", "batches", "reconciles"):
        t.add_column(col, justify="right")
    c = state.counts()
    t.add_row(
        *(str(c[k]) for k in ("extracted", "loaded", "rejected", "filtered", "batches")),
        "yes" if state.reconciles else "NO",
    )
    return t


def state_json(state: RunState | RunSummary) -> dict[str, Any]:
    """A run's state for `--json` output."""
    return {
        "pipeline": state.pipeline,
        "run_id": state.run_id,
        "status": state.status,
        **state.counts(),
        "reconciles": state.reconciles,
        "error": state.error,
        "trigger": state.trigger,
        "parent_run_id": state.parent_run_id,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "cursor_from": state.start_cursor,
        "cursor_to": state.cursor,
    }


@app.command()
def run(
    pipeline: str = typer.Argument(..., help="Pipeline name (see `jetl list`)."),
    run_id: str = typer.Option(None, help="Run id (default: a fresh manual id)."),
    wait: bool = typer.Option(True, help="Wait for the run to finish."),
    timeout: float = typer.Option(600, help="Seconds to wait."),
    force: bool = typer.Option(False, help="Run even if this run id already completed, and reload seen files."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Request one run of a pipeline, wait for it, and print counts per stage.

    The pipeline is looked up among those the running services loaded (their heartbeats say which, and which
    modules failed): an unknown name, or one whose module failed to load, exits 2 and requests nothing. The CLI
    never imports the pipeline module, so a module that reads the services' secrets runs from any shell. With no
    service running the request waits in NATS for one. --no-wait prints the run id (`--json`: a field).

    Exit codes: 0 completed; 1 failed; 2 unknown or broken pipeline; 3 NATS unreachable.

    Example: jetl run orders --json
    """
    from jetl.ops.health import served_pipelines

    requested: list[str] = []

    async def _go() -> RunState | None:
        async with client() as jc:
            served = await served_pipelines(jc)
            code_hash = served.check(pipeline) if served is not None else ""
            if served is None and not json_out:
                err_console.print("[yellow]no extractor is running: the run waits for one[/yellow]", highlight=False)
            # while NATS is away the request is resent, for no longer than the command waits
            req = await jc.request_run(
                pipeline, run_id=run_id, force=force, code_hash=code_hash, retry_s=min(timeout, 60.0)
            )
            requested.append(req.run_id)
            if not wait:
                return None
            with progress(not json_out, f"run {req.run_id}", None) as update:
                return await jc.wait(pipeline, req.run_id, timeout=timeout, on_event=follow(update))

    state = run_async(_go())
    if state is None:
        if json_out:
            print_json({"pipeline": pipeline, "run_id": requested[0], "status": "requested"})
        else:
            console.print(f"requested {pipeline} run {requested[0]}", highlight=False)
        return
    if json_out:
        print_json(state_json(state))
    else:
        console.print(counts_table(state))
        if state.error:
            console.print(f"[red]{state.error}[/red]")
    if state.status != "completed":
        raise typer.Exit(EXIT_FAILED)


def _duration(st: RunState | RunSummary) -> str:
    if st.started_at is None:
        return "-"
    end = st.finished_at or datetime.now(UTC)
    return f"{(end - st.started_at).total_seconds():.1f}s"


def _notes(st: RunState | RunSummary) -> str:
    from jetl.positions import cursor_text

    notes = []
    if st.parent_run_id:
        notes.append(f"of {st.parent_run_id}")
    if st.shadow:
        notes.append("shadow")
    if st.redrive:
        notes.append(f"{len(st.redrive)} dead letter(s)")
    if st.start_cursor is not None or st.cursor is not None:
        notes.append(f"cursor {cursor_text(st.start_cursor)} -> {cursor_text(st.cursor)}")
    if st.drift:
        notes.append(f"schema drift: {'; '.join(st.drift[:3])}{' ...' if len(st.drift) > 3 else ''}")
    if st.evolved:
        notes.append(f"schema evolved: {'; '.join(st.evolved[:3])}{' ...' if len(st.evolved) > 3 else ''}")
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

    async def _go() -> tuple[int | None, list[RunState | RunSummary]]:
        if not rebuild:  # one plain connection, totals only: what the table shows (`jetl.ops.run_list`)
            from jetl.ops.run_list import run_list

            return None, (await run_list(nats_settings(), pipeline))[:limit]
        from jetl.eventlog import rebuild as refold

        async with client() as jc:
            n = await refold(jc.conn, pipeline)
            states: list[RunState | RunSummary] = [*(await jc.runs(pipeline))[:limit]]
            return n, states

    refolded, runs = run_async(_go())
    if json_out:
        print_json(
            [
                state_json(r)
                | {"requested_at": r.requested_at, "shadow": r.shadow, "drift": r.drift, "evolved": r.evolved}
                for r in runs
            ]
        )
        return
    if refolded is not None:
        console.print(f"rebuilt the run state from {refolded} event(s)")
    t = Rows(title=f"runs of {pipeline}" if pipeline else "runs")
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
            stamp(r.requested_at),
            _duration(r),
            *(str(c[k]) for k in ("extracted", "loaded", "rejected", "filtered")),
            "ok" if r.reconciles else "[red]NO[/red]",
            _notes(r),
        )
    if runs:
        print_table(t)
    else:
        console.print("no runs yet")
    if pipeline:
        _print_source_lag(pipeline)


def _print_source_lag(pipeline: str) -> None:
    """The lag of a pipeline that reads a log (a CDC slot) behind its source, when its file is here to ask."""
    from pathlib import Path

    from jetl.ops.health import lag_text, source_lags
    from jetl.protocols import SourceLag

    s = settings()
    if not Path(s.pipelines_dir).is_dir():
        return
    p = load_pipelines(s)[0].get(pipeline)
    if p is None:
        return
    for lag in run_async(source_lags(p, 10.0)):
        if isinstance(lag, SourceLag):
            console.print(f"source lag: {lag_text(lag)} ({lag.detail})")
        else:
            console.print(f"[red]source lag unknown[/red]: {lag}")


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
    from rich.table import Table

    async def _go() -> list[Event]:
        async with client() as jc:
            events: list[Event] = await jc.events(run_id, pipeline)
            return events

    events = run_async(_go())
    if not events:
        err_console.print(f"[red]error:[/red] no events for run {run_id!r} (see `jetl status`)")
        raise typer.Exit(EXIT_USAGE)
    from jetl.events import SchemaDrift, SchemaEvolved
    from jetl.ops.cursors import cursor_text
    from jetl.ops.ledger import audit_rows
    from jetl.ops.schema import drift_json, drift_report
    from jetl.projection import fold

    state: RunState | None = None
    for ev in events:
        state = fold(state, ev)
    assert state is not None
    run_steps, batches = audit_rows(events)
    hashes = sorted({ev.code_hash for ev in events if ev.code_hash})
    if json_out:
        print_json(
            {
                "run": state_json(state),
                "code_hashes": hashes,
                "steps": run_steps,
                "batches": batches,
                "schema": drift_json(drift_report([ev for ev in events if isinstance(ev, SchemaDrift)])),
                "evolved": [
                    {"batch_id": ev.batch_id, "evolution": ev.evolution, "statements": ev.statements}
                    for ev in events
                    if isinstance(ev, SchemaEvolved)
                ],
            }
        )
        return
    console.print(
        f"[bold]{state.pipeline} {state.run_id}[/bold]: {state.status}, trigger {state.trigger}"
        + (f", parent {state.parent_run_id}" if state.parent_run_id else "")
        + (
            f", interval {stamp(state.data_interval_start)} .. {stamp(state.data_interval_end)}"
            if state.data_interval_start
            else ""
        )
    )
    t = Table(title="run")
    for col in ("+s", "event", "detail", "service@instance", "code"):
        t.add_column(col)
    for s in run_steps:
        detail = " ".join(f"{k}={cursor_text(v) if k in ('cursor', 'previous') else v}" for k, v in s["detail"].items())
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
    report = drift_report([ev for ev in events if isinstance(ev, SchemaDrift)])
    drift = report.fields
    if drift:
        d = Table(title="schema drift (see `jetl schema diff`)")
        for col in ("field", "drift", "model", "seen", "records", "batches", "example", "first batch"):
            d.add_column(col)
        for f in drift:
            d.add_row(f.path, f.kind, f.expected, f.seen, str(f.records), str(f.batches), f.example, f.first_batch)
        console.print(d)
        if report.discarded_rows or report.discarded_values:
            console.print(
                f"the schema contract discarded {report.discarded_rows} record(s), {report.discarded_values} value(s)"
            )
    evolved = [ev for ev in events if isinstance(ev, SchemaEvolved)]
    if evolved:
        e = Table(title="schema evolved (each a migration in jetl_migrations)")
        for col in ("batch", "evolution", "DDL"):
            e.add_column(col)
        for ev in evolved:
            e.add_row(ev.batch_id, ", ".join(f"{k} {v}" for k, v in ev.evolution.items()), ";\n".join(ev.statements))
        console.print(e)
    if len(hashes) > 1:
        console.print(f"[yellow]the pipeline code changed during this run: {', '.join(hashes)}[/yellow]")
    console.print(counts_table(state, title="ledger"))
    if state.start_cursor is not None or state.cursor is not None:
        console.print(f"cursor: from {cursor_text(state.start_cursor)} to {cursor_text(state.cursor)}")


runs_app = typer.Typer(rich_markup_mode=None, help="Runs: end one that cannot finish.")
app.add_typer(runs_app, name="runs")


@runs_app.command("cancel")
def runs_cancel(
    run_id: str = typer.Argument(..., help="The run id (see `jetl status`)."),
    reason: str = typer.Option(..., "--reason", help="Why: kept as the run's error."),
    pipeline: str = typer.Option(None, help="The run's pipeline (found from the log when omitted)."),
    by: str = typer.Option("", "--by", help="Who cancels it (kept with the reason)."),
    wait: float = typer.Option(15, help="Seconds to wait for the tracker to fold the cancellation."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's state as JSON."),
) -> None:
    """End an unfinished run by an event (run.cancelled): it counts as failed, and later runs of its pipeline are no
    longer refused as overlapping it. Batches of it still in flight may still load; the ledger shows them.

    Example: jetl runs cancel orders-20261125T0000Z --reason "input fixed; re-running"
    """

    async def _go() -> RunState | None:
        async with client() as jc:
            state = await jc.cancel(run_id, reason, pipeline, by)
            # the overlap guard reads the folded state: done once the tracker has folded the run's end
            return await jc.verdict(state.pipeline, run_id, timeout=wait)

    folded = run_async(_go())
    if folded is None:
        err_console.print(
            f"[yellow]run.cancelled is logged for {run_id}, but the tracker has not folded it within {wait:.0f}s "
            "(is the scheduler running? `jetl health`)[/yellow]"
        )
        raise typer.Exit(EXIT_FAILED)
    if folded.status == "completed":
        err_console.print(
            f"[red]refused: run {run_id} of {folded.pipeline} completed before the cancel reached the tracker; it "
            "stays completed (its rows are loaded and its cursor moved)[/red]"
        )
        raise typer.Exit(EXIT_FAILED)
    if json_out:
        print_json(state_json(folded))
    else:
        console.print(f"cancelled {folded.pipeline} {run_id}: {folded.error}")
