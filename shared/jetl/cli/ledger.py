"""`jetl counts`: a pipeline's ledger (jetl.ops.ledger) per run and in total, beside the destination's row count.

The destination's own count is the one thing not folded from the event log: only the loader service can give it
(it alone opens the destination).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from jetl.cli._app import app, client, run_async
from jetl.cli._output import EXIT_FAILED, EXIT_UNAVAILABLE, console, err_console, print_json

if TYPE_CHECKING:
    from jetl.projection import RunState


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
    from rich.table import Table

    from jetl.errors import JetlError
    from jetl.ops.destination import DestinationCount
    from jetl.ops.health import served_pipelines
    from jetl.ops.ledger import LEDGER, ledger_report, ledger_totals, ledger_verdict

    async def _go() -> tuple[list[RunState], DestinationCount | None, str | None]:
        async with client() as jc:
            runs: list[RunState] = await jc.runs(pipeline)
            served = await served_pipelines(jc)
            if not runs and served is not None:
                served.check(pipeline)  # a name nothing knows: exit 2 and say so, not "unreachable"
            try:
                return runs, await jc.destination_count(pipeline), None
            except JetlError as exc:
                return runs, None, str(exc)

    runs, dest, dest_error = run_async(_go())
    rows = ledger_report(runs, dest.by_run if dest else None)
    verdict = ledger_verdict(rows, dest)
    mismatched = verdict["mismatched_runs"]
    totals = ledger_totals(rows, dest)
    if json_out:
        print_json(
            {
                "pipeline": pipeline,
                "destination": dest.destination if dest else None,
                "destination_error": dest_error,
                "key": dest.key if dest else None,
                "distinct_keys": dest.keys if dest else None,
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
        for label, part in (("replays", totals["replays"]), ("redrives", totals["redrives"])):
            if part["runs"]:
                t.add_row(label, "", f"{part['runs']} runs", *(str(part[k]) for k in LEDGER), "", "", "")
        t.add_row(
            "total (own runs)",
            "",
            f"{totals['runs']} runs",
            *(str(totals[k]) for k in ("extracted", "loaded", "rejected", "filtered")),
            "ok" if verdict["reconciles"] else "[red]NO[/red]",
            str(totals["expected_in_destination"]),
            "-" if totals["in_destination"] is None else str(totals["in_destination"]),
        )
        console.print(t)
        if dest is not None:
            console.print(f"destination: {dest.destination}")
            if dest.key:
                console.print(f"rows: {dest.total}, distinct keys {dest.key}: {dest.keys}")
            if dest.current is not None:
                console.print(f"current rows (what `jetl query` reads): {dest.current}")
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
