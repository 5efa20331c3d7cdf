"""`jetl schema diff`: how a pipeline's records differ from its input model, from the `schema.drift` events
(jetl.ops.schema)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from jetl.cli._app import app, client, run_async
from jetl.cli._output import console, print_json, stamp

if TYPE_CHECKING:
    from jetl.projection import RunState

schema_app = typer.Typer(rich_markup_mode=None, help="Schema drift: how a pipeline's records differ from its model.")
app.add_typer(schema_app, name="schema")


@schema_app.command("diff")
def diff(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    run_id: str = typer.Option(None, "--run", help="Only this run's drift."),
    json_out: bool = typer.Option(False, "--json", help="Print the drift as JSON."),
) -> None:
    """Fields the pipeline's records hold that its input model does not know (new), fields it expects that they
    lack (missing), values of another type (changed): per field, records and batches that showed it, an example,
    and the first batch seen. The input model is the pipeline's first TypeTransformer's, or its schema.

    A batch whose records all passed is sampled (its first and last record); one with rejected records is looked at
    whole. Exits 0 whether or not there is drift.

    Example: jetl schema diff orders --json
    """
    from rich.table import Table

    from jetl.ops.schema import DriftReport, drift_json, schema_drift

    async def _go() -> DriftReport:
        async with client() as jc:
            return await schema_drift(jc, pipeline, run_id)

    report = run_async(_go())
    fields = report.fields
    if json_out:
        print_json({"pipeline": pipeline, "run_id": run_id} | drift_json(report))
        return
    if not fields:
        console.print(f"no schema drift seen for {pipeline}", highlight=False)
        return
    t = Table(title=f"schema drift of {pipeline}")
    for col in ("field", "drift", "model", "seen", "records", "batches", "example", "first batch", "first seen"):
        t.add_column(col, justify="right" if col in ("records", "batches") else "left")
    for f in fields:
        t.add_row(
            f.path,
            f.kind,
            f.expected or "-",
            f.seen or "-",
            str(f.records),
            str(f.batches),
            f.example or "-",
            f.first_batch,
            stamp(f.first_at),
        )
    console.print(t)
    if report.discarded_rows or report.discarded_values:
        console.print(
            f"the schema contract discarded {report.discarded_rows} record(s) and {report.discarded_values} value(s)",
            highlight=False,
        )


@schema_app.command("accept")
def accept(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    run_id: str = typer.Option(None, "--run", help="Only this run's held batches."),
    timeout: float = typer.Option(600, help="Seconds to wait for the redrive run."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Release the batches a schema contract held, once the pipeline takes them: its model changed to accept the
    drift, or its contract is now evolve (or none). Each held batch is checked against the pipeline as it is in the
    pipelines folder first; if any would be held again, nothing is released and the command says why (exit 1).
    The release is a redrive of exactly the held dead letters (`jetl dlq redrive`): a new run, trigger `redrive`.

    Example: jetl schema accept items
    """
    from jetl.cli._app import registered_pipeline
    from jetl.cli._output import EXIT_FAILED
    from jetl.cli.runs import counts_table, state_json
    from jetl.ops.schema import accept_held

    p = registered_pipeline(pipeline)
    if p is None:
        console.print(f"no pipeline {pipeline!r} in the pipelines folder: accept checks the held batches against it")
        raise typer.Exit(EXIT_FAILED)

    async def _go() -> tuple[list[int], list[tuple[int, str]], RunState | None]:
        async with client() as jc:
            seqs, refused, request = await accept_held(jc, p, run_id=run_id)
            state = await jc.wait(pipeline, request.run_id, timeout=timeout) if request is not None else None
            return seqs, refused, state

    seqs, refused, state = run_async(_go())
    if json_out:
        print_json(
            {
                "pipeline": pipeline,
                "released": seqs,
                "refused": [{"seq": s, "reason": why} for s, why in refused],
                "run": state_json(state) if state is not None else None,
            }
        )
    elif refused:
        for seq, why in refused:
            console.print(f"held batch (dlq#{seq}) would be held again: {why}", highlight=False)
    elif state is None:
        console.print(f"no held batches of {pipeline}", highlight=False)
    else:
        console.print(counts_table(state, title=f"released {len(seqs)} held batch(es): {state.status}"))
    if refused or (state is not None and state.status != "completed"):
        raise typer.Exit(EXIT_FAILED)
