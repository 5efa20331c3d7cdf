"""`jetl run`: request a run, follow it through the event log, print the counts per stage."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from jetl.cli._app import EXIT_FAILED, app, console, follow, progress, run_async, settings
from jetl.projection import RunState


def counts_table(state: RunState, title: str | None = None) -> Table:
    """Per-stage counts of a run, and whether the ledger reconciles."""
    t = Table(title=title or f"{state.pipeline} {state.run_id}: {state.status}")
    for col in ("extracted", "loaded", "rejected", "filtered", "batches", "reconciles"):
        t.add_column(col, justify="right")
    c = state.counts()
    t.add_row(
        *(str(c[k]) for k in ("extracted", "loaded", "rejected", "filtered", "batches")),
        "yes" if state.reconciles else "NO",
    )
    return t


def state_json(state: RunState) -> dict[str, Any]:
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

    Example: jetl run orders --json
    """
    from jetl.client import JetlClient

    async def _go() -> RunState | None:
        async with JetlClient(settings()) as jc:
            req = await jc.request_run(pipeline, run_id=run_id, force=force)
            if not wait:
                return None
            with progress(not json_out, f"run {req.run_id}", None) as update:
                return await jc.wait(pipeline, req.run_id, timeout=timeout, on_event=follow(update))

    state = run_async(_go())
    if state is None:
        console.print("requested")
        return
    if json_out:
        import orjson

        print(orjson.dumps(state_json(state)).decode())
    else:
        console.print(counts_table(state))
        if state.error:
            console.print(f"[red]{state.error}[/red]")
    if state.status != "completed":
        raise typer.Exit(EXIT_FAILED)
