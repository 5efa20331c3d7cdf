"""`jetl query`: read a pipeline's destination while the stack runs.

An embedded ClickHouse (chdb) opens in one process at a time, the loader's: the question goes to that loader over
its read-only `query` verb, with row and time caps. A ClickHouse server is asked directly. Either way the table's
name in the query reads its current rows (per key the highest version, deletes applied, a replace's newest complete
run) unless `--all` asks for every stored row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from jetl.cli._app import app, client, load_pipelines, run_async, settings
from jetl.cli._output import EXIT_FAILED, EXIT_UNAVAILABLE, console, err_console, print_json

if TYPE_CHECKING:
    from jetl.ops.destination import QueryResult


@app.command()
def query(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    sql: str = typer.Argument(..., help="One SELECT; the destination table's name reads its current rows."),
    max_rows: int = typer.Option(100, "--max-rows", min=1, max=10_000, help="Rows shown at most."),
    seconds: float = typer.Option(10.0, "--seconds", min=0.1, max=60, help="Work the destination may spend."),
    all_rows: bool = typer.Option(False, "--all", help="Every stored row: older versions and delete markers too."),
    json_out: bool = typer.Option(False, "--json", help="Print columns and rows as JSON."),
) -> None:
    """Run one read-only SELECT over a pipeline's destination, with the stack up.

    Exits 1 when the destination refuses the query, 3 when it cannot be reached.

    Example: jetl query orders "SELECT status, count() FROM orders GROUP BY status"
    """
    from jetl.errors import JetlError, TransientError

    try:
        result = run_async(_ask(pipeline, sql, max_rows, seconds, not all_rows))
    except TransientError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except JetlError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        print_json(
            {
                "pipeline": pipeline,
                "destination": result.destination,
                "columns": result.columns,
                "rows": result.rows,
                "truncated": result.truncated,
            }
        )
        return
    from rich.table import Table

    table = Table(*result.columns, title=result.destination)
    for row in result.rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    more = f" (more matched: showing the first {max_rows})" if result.truncated else ""
    console.print(f"{len(result.rows)} row(s){more}")


async def _ask(pipeline: str, sql: str, max_rows: int, seconds: float, current: bool) -> QueryResult:
    """Through the loader, or straight to a ClickHouse server the pipeline writes to."""
    from jetl.loaders.clickhouse import ClickHouseLoader
    from jetl.ops.destination import QueryResult

    s = settings()
    found, _ = load_pipelines(s)
    loader = found[pipeline].loader if pipeline in found else None
    async with client() as jc:
        if isinstance(loader, ClickHouseLoader) and not (loader.dsn or s.clickhouse_dsn).startswith("chdb:"):
            import asyncio

            loader.open(s.clickhouse_dsn, s.clickhouse)
            runs = await jc.run_view(pipeline)
            columns, rows, truncated = await asyncio.to_thread(
                loader.query, sql, runs=runs, current=current, max_rows=max_rows, seconds=seconds
            )
            return QueryResult(loader.describe(), columns, rows, truncated)
        return await jc.query(pipeline, sql, max_rows=max_rows, seconds=seconds, current=current)
