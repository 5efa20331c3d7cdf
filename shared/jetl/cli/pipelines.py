"""`jetl list` and `jetl validate`: the pipelines in the pipelines folder, and whether each would run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, load_pipelines, settings
from jetl.cli._output import EXIT_FAILED, EXIT_USAGE, console, err_console, print_checks, print_json

if TYPE_CHECKING:
    from jetl.pipeline import Pipeline


def schedule_text(p: Pipeline) -> str:
    """`0 * * * * UTC, catch-up latest, 1 at a time` or `-`."""
    c = p.schedule
    if c is None:
        return "-"
    paused = ", paused in code" if c.paused else ""
    return f"{c.expression} {c.tz}, catch-up {c.catch_up}, max {c.max_active_runs} active{paused}"


def _names(items: Any) -> list[str]:
    return [type(x).__name__ for x in items]


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print the pipelines as JSON.")) -> None:
    """List the pipelines in the pipelines folder: schedule, extractors, transformers, loader, schema, file.

    Exit code 2 when a module fails to load (it is listed under errors; `jetl validate` says more).

    Example: jetl list --json
    """
    from rich.table import Table

    found, errors = load_pipelines(settings())
    rows = [
        {
            "name": p.name,
            "description": p.description,
            "schedule": p.schedule.expression if p.schedule else None,
            "tz": p.schedule.tz if p.schedule else None,
            "catch_up": p.schedule.catch_up if p.schedule else None,
            "max_active_runs": p.schedule.max_active_runs if p.schedule else None,
            "paused_in_code": p.schedule.paused if p.schedule else None,
            "extractors": _names(p.extractors),
            "transformers": _names(p.transformers),
            "loader": p.loader.describe(),
            "schema": p.schema.__name__,
            "batch_size": p.batch_size,
            "file": p.source_file,
        }
        for p in sorted(found.values(), key=lambda p: p.name)
    ]
    if json_out:
        print_json({"pipelines": rows, "errors": errors}, indent=True)
    else:
        t = Table(title=f"{len(rows)} pipeline(s) in {settings().pipelines_dir}")
        for col in ("name", "schedule", "extractors", "transformers", "loader", "schema"):
            t.add_column(col, overflow="fold")
        for p in sorted(found.values(), key=lambda p: p.name):
            t.add_row(
                p.name,
                schedule_text(p),
                ", ".join(_names(p.extractors)),
                " -> ".join(_names(p.transformers)) or "-",
                p.loader.describe(),
                p.schema.__name__,
            )
        console.print(t)
        for file, error in errors.items():
            err_console.print(f"[red]broken:[/red] {file}: {error}", highlight=False)
    if errors:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def validate(
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
) -> None:
    """Import and check every pipeline: modules load, schemas chain, connectors configured, cron valid.

    Exit code 0 when every pipeline passes, 2 when a module or a check fails (1 with --strict and only warnings).

    Example: jetl validate --strict
    """
    from jetl.ops.checks import check_pipeline

    s = settings()
    found, errors = load_pipelines(s)
    rows: list[dict[str, str]] = [
        {"pipeline": "-", "check": "import", "result": "error", "detail": e, "file": f} for f, e in errors.items()
    ]
    for p in sorted(found.values(), key=lambda p: p.name):
        rows.append(
            {"pipeline": p.name, "check": "import", "result": "ok", "detail": "registered", "file": p.source_file}
        )
        for check, result, detail in check_pipeline(p, s):
            rows.append({"pipeline": p.name, "check": check, "result": result, "detail": detail, "file": p.source_file})
    n_err = sum(r["result"] == "error" for r in rows)
    n_warn = sum(r["result"] == "warn" for r in rows)
    if json_out:
        print_json(
            {"ok": n_err == 0 and (n_warn == 0 or not strict), "errors": n_err, "warnings": n_warn, "checks": rows},
            indent=True,
        )
    else:
        title = f"jetl validate: {len(found)} pipeline(s), {n_err} error(s), {n_warn} warning(s)"
        print_checks(title, rows, ("pipeline", "check", "result", "detail"), "result")
    if n_err:
        raise typer.Exit(EXIT_USAGE)
    if n_warn and strict:
        raise typer.Exit(EXIT_FAILED)
