"""`jetl schedule`, `pause`, `resume`: the schedules' live state (jetl.ops.schedule_state)."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, client, load_pipelines, one_pipeline, run_async, settings
from jetl.cli._output import EXIT_USAGE, console, die, err_console, print_json, short_stamp

if TYPE_CHECKING:
    from jetl.pipeline import Pipeline
    from jetl.settings import JetlSettings


@app.command()
def schedule(
    pipeline: str = typer.Argument(None, help="One pipeline (default: all scheduled ones)."),
    n_next: int = typer.Option(3, "--next", help="How many upcoming runs to show."),
    json_out: bool = typer.Option(False, "--json", help="Print the schedules as JSON."),
) -> None:
    """Show each scheduled pipeline's cron, pause state, last requested slot and next runs (UTC).

    A run for the data interval [slot, next slot) is requested when that interval ends; the times shown are those.

    Example: jetl schedule --next 5
    """
    from rich.table import Table

    from jetl.errors import JetlError
    from jetl.ops import schedule_state

    s = settings()
    chosen = [one_pipeline(s, pipeline)] if pipeline else sorted(load_pipelines(s)[0].values(), key=lambda p: p.name)
    if pipeline and chosen[0].schedule is None:
        die(f"pipeline {pipeline!r} has no schedule", "add schedule=Cron(...) to its Pipeline", EXIT_USAGE)

    async def _rows() -> tuple[list[dict[str, Any]], str]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                jc = await stack.enter_async_context(client())
            except JetlError as exc:  # the schedules are still shown, from the code alone
                unknown = f"{exc}: pause state and last slots unknown"
                return await schedule_state.schedule_rows(None, chosen, n_next), unknown
            return await schedule_state.schedule_rows(jc, chosen, n_next), ""

    rows, note = run_async(_rows())
    if note:
        err_console.print(f"[yellow]warning:[/yellow] {note}", highlight=False)
    if json_out:
        print_json({"schedules": rows}, indent=True)
        return
    t = Table(title="jetl schedule (times in UTC)")
    for col in ("pipeline", "cron", "catch-up", "state", "last slot requested", "next runs"):
        t.add_column(col, overflow="fold")
    for r in rows:
        state = f"paused ({r['paused_by']})" if r["paused"] else "active"
        nxt = ", ".join(short_stamp(datetime.fromisoformat(x)) for x in r["next_runs"])
        t.add_row(
            r["pipeline"],
            f"{r['cron']} {r['tz']}",
            f"{r['catch_up']}, max {r['max_active_runs']}",
            state,
            r["last_slot_end"] or "-",
            nxt,
        )
    console.print(t)


def _scheduled(s: JetlSettings, name: str) -> Pipeline:
    p = one_pipeline(s, name)
    if p.schedule is None:
        die(
            f"pipeline {name!r} has no schedule, so there is nothing to pause or resume",
            "add schedule=Cron(...) to its Pipeline",
            EXIT_USAGE,
        )
    return p


@app.command()
def pause(pipeline: str = typer.Argument(..., help="Pipeline name.")) -> None:
    """Stop scheduling a pipeline (runs in flight finish; manual runs and backfills still work).

    The flag lives in NATS, so every scheduler replica honours it at once; it overrides Cron(paused=...).

    Example: jetl pause daily_sales
    """
    from jetl.ops import schedule_state

    s = settings()
    p = _scheduled(s, pipeline)

    async def _pause() -> None:
        async with client() as jc:
            await schedule_state.pause(jc, p.name)

    run_async(_pause())
    console.print(f"paused {p.name}: no more scheduled runs until `jetl resume {p.name}`")


@app.command()
def resume(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    from_now: bool = typer.Option(False, "--from-now", help="Skip the slots missed while paused."),
) -> None:
    """Schedule a paused pipeline again.

    Slots missed while paused follow its catch-up policy (`all` runs every one of them) unless --from-now skips
    them.

    Example: jetl resume daily_sales --from-now
    """
    from jetl.ops import schedule_state

    s = settings()
    p = _scheduled(s, pipeline)

    async def _resume() -> int:
        async with client() as jc:
            return await schedule_state.resume(jc, p, from_now=from_now)

    missed = run_async(_resume())
    console.print(f"resumed {p.name}")
    if missed:
        console.print(
            f"{missed} slot(s) missed while paused will be requested (catch-up 'all'); "
            f"`jetl pause {p.name}` then `jetl resume {p.name} --from-now` skips them",
            highlight=False,
        )
