"""`jetl schema diff`: how a pipeline's records differ from its input model, from the `schema.drift` events
(jetl.ops.schema)."""

from __future__ import annotations

import typer

from jetl.cli._app import app, client, run_async
from jetl.cli._output import console, print_json, stamp

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
