"""`jetl dlq list` and `jetl dlq redrive`: dead-lettered records with their reasons; send them back after a fix."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, client, follow, progress, registered_pipeline, run_async
from jetl.cli._output import EXIT_FAILED, console, print_json
from jetl.cli.runs import counts_table, state_json

if TYPE_CHECKING:
    from jetl.projection import RunState


dlq_app = typer.Typer(
    rich_markup_mode=None, help="Dead letters: list rejected records with their reasons, redrive them after a fix."
)
app.add_typer(dlq_app, name="dlq")


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
    trial, `unreadable` for input that could not be read at all, `too large` for a record over NATS's max_payload).
    A record or letter too large for a message is kept in the JETL_DLQ_BODIES object store: `ref` names it.

    Example: jetl dlq list orders --run orders-20261125T0000Z
    """
    from rich.table import Table

    async def _go() -> tuple[list[Any], list[RunState], bool]:
        """The first dead letters that make `limit` records (read as they come; the rest is never read), the
        runs, and whether there are more."""
        letters: list[Any] = []
        records = 0
        async with client() as jc:
            async with contextlib.aclosing(jc.iter_dead_letters(pipeline)) as kept:
                async for seq, dl in kept:
                    if run is not None and dl.run_id != run:
                        continue
                    if records >= limit:
                        return letters, await jc.runs(pipeline), True
                    letters.append((seq, dl))
                    records += len(dl.records or [{}])
            return letters, await jc.runs(pipeline), False

    from jetl.ops.deadletters import letter_rows
    from jetl.ops.redrive import dead_letter_status

    letters, runs, more = run_async(_go())
    status = dead_letter_status(letters, runs)
    rows = [row for seq, dl in letters for row in letter_rows(seq, dl, status[seq])]
    more, rows = more or len(rows) > limit, rows[:limit]  # the last letter read may hold more records than fit
    if json_out:
        print_json(rows)
        return
    shown = f"the first {len(rows)} record(s); more are kept (--limit)" if more else f"{len(rows)} record(s)"
    t = Table(title=f"dead letters of {pipeline}: {shown}")
    for col in ("dlq#", "run", "stage", "origin", "field", "message", "ref", "status"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["seq"]),
            r["run_id"],
            f"{r['stage']}/{r['scope']}",
            r["origin"] or "-",
            r["field"] or "-",
            str(r["message"])[:100],
            r["ref"] or "-",
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
    p = registered_pipeline(pipeline)

    async def _go(update: Callable[..., None]) -> RunState | None:
        async with client() as jc:
            state: RunState | None = await jc.redrive(
                pipeline, run_id=run, timeout=timeout, code_hash=p.code_hash if p else "", on_event=follow(update)
            )
            return state

    with progress(not json_out, f"redrive {pipeline}", None) as update:
        state = run_async(_go(update))
    if state is None:
        if json_out:
            print_json(None)
        else:
            console.print("nothing to redrive")
        return
    if json_out:
        print_json(state_json(state) | {"dead_letters": state.redrive})
    else:
        console.print(
            counts_table(state, title=f"redrive {state.run_id} of {len(state.redrive)} dead letter(s): {state.status}")
        )
    if state.status != "completed":
        raise typer.Exit(EXIT_FAILED)
