"""`jetl schedule`, `pause`, `resume`: the schedules' live state (jetl.ops.schedule_state); and `jetl resnapshot`, a
new snapshot of a change-data-capture pipeline's table (jetl.ops.cdc), whose pause and resume also say what its
source's log keeps."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, client, load_pipelines, one_pipeline, run_async, settings
from jetl.cli._output import EXIT_USAGE, console, die, err_console, failing, print_json, short_stamp

if TYPE_CHECKING:
    from jetl.ops.cdc import Resnapshot, SourceLog
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


def _kept(logs: list[SourceLog]) -> str:
    """`public.items: 12.0 KiB kept now, slot jetl_items at 0/1A2B3C`, or why that is not told, per log reader."""
    from jetl.ops.health import size

    return "; ".join(
        f"{x.table}: {size(x.lag.bytes)} kept now, {x.lag.detail}" if x.lag is not None else f"{x.table}: {x.unknown}"
        for x in logs
    )


def _logs(p: Pipeline) -> list[SourceLog]:
    """What the source keeps for each of `p`'s log readers, asked briefly (never an error: see ops.cdc.source_logs)."""
    from jetl.ops import cdc

    return run_async(cdc.source_logs(p)) if cdc.log_readers(p) else []


@app.command()
def pause(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Stop scheduling a pipeline (runs in flight finish; manual runs and backfills still work).

    The flag lives in NATS, so every scheduler replica honours it at once; it overrides Cron(paused=...). A
    change-data-capture pipeline is warned about: its source keeps the log (WAL) for its replication slot while it is
    paused, shown with the bytes kept now when the source answers within a few seconds.

    Example: jetl pause daily_sales
    """
    from jetl.ops import schedule_state

    s = settings()
    p = _scheduled(s, pipeline)

    async def _pause() -> None:
        async with client() as jc:
            await schedule_state.pause(jc, p.name)

    run_async(_pause())
    logs = _logs(p)
    if json_out:
        print_json({"pipeline": p.name, "paused": True, "source_log": [x.as_json() for x in logs]})
        return
    console.print(f"paused {p.name}: no more scheduled runs until `jetl resume {p.name}`")
    if logs:
        err_console.print(
            f"[yellow]warning:[/yellow] {p.name} reads a change log: while it is paused, the source keeps the WAL for "
            f"its replication slot, growing with every write to the database ({_kept(logs)}). Watch it with `jetl "
            "health`; resume before the source's disk fills",
            highlight=False,
        )


@app.command()
def resume(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    from_now: bool = typer.Option(False, "--from-now", help="Skip the slots missed while paused."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Schedule a paused pipeline again.

    Slots missed while paused follow its catch-up policy (`all` runs every one of them) unless --from-now skips
    them. The next run of a change-data-capture pipeline reads every change its replication slot kept meanwhile
    (--from-now skips schedule slots, never changes).

    Example: jetl resume daily_sales --from-now
    """
    from jetl.ops import schedule_state

    s = settings()
    p = _scheduled(s, pipeline)

    async def _resume() -> int:
        async with client() as jc:
            return await schedule_state.resume(jc, p, from_now=from_now)

    missed = run_async(_resume())
    logs = _logs(p)
    if json_out:
        print_json(
            {"pipeline": p.name, "paused": False, "missed_slots": missed, "source_log": [x.as_json() for x in logs]}
        )
        return
    console.print(f"resumed {p.name}")
    if missed:
        console.print(
            f"{missed} slot(s) missed while paused will be requested (catch-up 'all'); "
            f"`jetl pause {p.name}` then `jetl resume {p.name} --from-now` skips them",
            highlight=False,
        )
    if logs:
        console.print(
            f"the next run of {p.name} reads everything its replication slot kept while it was paused ({_kept(logs)})",
            highlight=False,
        )


@app.command()
def resnapshot(
    pipeline: str = typer.Argument(..., help="Pipeline name (one that reads a table by change data capture)."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the event log; default: 're-snapshot')."),
    by: str = typer.Option("", "--by", help="Who asks for it (default: the OS user)."),
    run: bool = typer.Option(
        True, "--run/--no-run", help="Request the snapshot run at once (or leave it to the next run)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Take a new snapshot of a change-data-capture pipeline's table: forget its cursor (a cursor.changed event, with
    who and why) and request the run that reads the table again, at once (--no-run: its next scheduled run does).

    Refused while a run of the pipeline is unfinished (it would undo the change when it completes). The replication
    slot stays, and the run after the snapshot reads again what it held, so rows deleted since the last run leave
    the destination too. After a TRUNCATE, empty the destination first (docs/cdc.md).

    Example: jetl resnapshot items --reason "column added"
    """
    from jetl.ops import cdc

    p = one_pipeline(settings(), pipeline)
    with failing():  # a pipeline that reads no table by CDC is refused before NATS is asked anything
        cdc.resnapshot_target(p)

    async def _go() -> Resnapshot:
        async with client() as jc:
            return await cdc.resnapshot(jc, p, by=by, reason=reason, run=run)

    done = run_async(_go())
    if json_out:
        print_json(done.as_json())
    elif done.run_id is not None:
        console.print(f"requested {p.name} run {done.run_id}: it takes a new snapshot of {done.table}", highlight=False)
    else:
        console.print(
            f"{p.name}: cursor forgotten; its next run takes a new snapshot of {done.table} (`jetl run {p.name}`)",
            highlight=False,
        )
