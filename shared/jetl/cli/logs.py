"""`jetl logs`: every log line of one run across all services, in time order (read by jetl.logs)."""

from __future__ import annotations

from typing import Any

import typer

from jetl.cli._app import app, progress, run_async, settings
from jetl.cli._output import console, die, err_console, print_json
from jetl.ops.logs import read_logs

_LOG_KEYS = ("timestamp", "host", "service", "level", "event", "pipeline", "run_id")


def format_log_line(line: dict[str, Any]) -> str:
    """`2026-11-25T10:00:01.123Z host-a extractor   info   run extracted  batches=3 records=2000`: the host is the
    one that wrote the line (a run's lines come from every host that ran a stage of it)."""
    extra = " ".join(f"{k}={v}" for k, v in line.items() if k not in _LOG_KEYS)
    ts = str(line.get("timestamp", ""))
    where = f"{line.get('host', '?')} {line.get('service', '?'):<11}"
    return f"{ts:<27} {where} {line.get('level', ''):<7} {line.get('event', '')}  {extra}".rstrip()


@app.command()
def logs(
    run_id: str = typer.Argument(..., help="Run id (see `jetl status`)."),
    pipeline: str = typer.Option(None, "--pipeline", help="Narrow to one pipeline (faster on a busy log)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines as they arrive."),
    follow_seconds: float = typer.Option(None, "--for", help="With --follow: stop after this many seconds."),
    service: str = typer.Option(None, "--service", help="Only lines from this service."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line (NDJSON)."),
    limit: int = typer.Option(10_000, "--limit", help="At most this many kept lines (0: all); read as printed."),
) -> None:
    """Print every log line of one run across all services, in time order (services ship lines bound to a run).

    Exit codes: 0 lines printed; 1 no line kept for that run; 3 NATS unreachable.

    Example: jetl logs demo_orders-m20261125T100000ab12 --follow
    """
    s = settings()

    def show(line: dict[str, Any]) -> None:
        if service and line.get("service") != service:
            return
        if json_out:
            print_json(line)
        else:
            console.print(format_log_line(line), highlight=False, markup=False, soft_wrap=True)

    with progress(not json_out, f"reading {run_id}", None, out=err_console) as update:
        n = run_async(
            read_logs(
                s,
                run_id,
                pipeline,
                follow=follow,
                follow_seconds=follow_seconds,
                on_line=show,
                limit=limit or None,
                progress=lambda done, total: update(completed=done, total=total),
            )
        )
    if n == 0:
        die(
            f"no log lines kept for run {run_id!r}",
            "check the run id (`jetl status`); lines are kept 14 days and shipped only with JETL_SHIP_LOGS=true",
        )
