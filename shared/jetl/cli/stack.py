"""Commands that run things: `up`, `serve`, `demo`."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from jetl.cli._app import app, settings
from jetl.cli._output import console, err_console, fail
from jetl.errors import ConfigError, JetlError
from jetl.runtime.embedded import SERVICES, USERS_FILE, Stack


def service_factory(name: str) -> Any:
    """The app factory of a service, found through the `jetl.services` entry-point group (never imported eagerly)."""
    found = {ep.name: ep for ep in entry_points(group="jetl.services")}
    if name not in found:
        raise ConfigError(f"unknown service {name!r} (installed: {', '.join(sorted(found)) or 'none'})")
    return found[name].load()


@app.command()
def serve(service: str = typer.Argument(..., help=f"One of: {', '.join(SERVICES)}.")) -> None:
    """Run one service in the foreground. Start several to share its work.

    Example: JETL_NATS__URL=nats://10.0.0.5:4222 jetl serve loader
    """
    try:
        factory = service_factory(service)
        fs_app = factory()
    except Exception as exc:
        fail(exc)
    try:
        asyncio.run(fs_app.run())
    except JetlError as exc:  # e.g. no deployment after the wait: one line, not a traceback
        fail(exc)


@app.command()
def up(
    data_dir: Path = typer.Option(None, help="Where NATS, chdb and logs live (default: JETL_DATA_DIR or .jetl)."),
    nats_url: str = typer.Option(None, help="Use this NATS instead of starting the embedded one."),
    scale: list[str] = typer.Option(
        [],
        "--scale",
        metavar="SERVICE=N",
        help="Run N processes of a service; they share its work (repeatable).",
    ),
) -> None:
    """Start an embedded nats-server with JetStream and the four services, until Ctrl-C.

    Scale the stage that limits throughput with --scale: its processes bind the same durable consumer.

    Example: jetl up --scale transformer=2   (then, in another shell: jetl run orders)
    """
    s = settings()
    try:
        replicas: dict[str, int] = {}
        for item in scale:
            name, sep, count = item.partition("=")
            if not sep or not count.strip().isdigit():
                raise ConfigError(f"--scale {item!r}: expected SERVICE=N, e.g. transformer=2")
            replicas[name.strip()] = int(count)
        stack = Stack(
            data_dir=(data_dir or s.data_dir).resolve(),
            pipelines_dir=s.pipelines_dir,
            nats_url=nats_url,
            replicas=replicas,
        )
        stack.start()
    except Exception as exc:
        fail(exc)
    console.print(f"NATS: [bold]{stack.nats_url}[/bold]  (export JETL_NATS__URL={stack.nats_url})")
    if stack.credentials is not None:
        users = stack.data_dir / "nats" / USERS_FILE
        console.print(f"NATS users: {users} (owner-only); the CLI connects as user [bold]operator[/bold]")
    for change in stack.deployed:
        if change.action == "differs":
            err_console.print(f"[yellow]warning:[/yellow] {change.what} {change.name} differs: {change.detail}")
    console.print(f"services: {', '.join(stack.procs)}; logs in {stack.data_dir / 'logs'}; Ctrl-C stops")
    stop = False

    def _sig(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _sig)
    signal.signal(signal.SIGTERM, _sig)
    try:
        while not stop:
            stack.check()
            time.sleep(0.5)
    except Exception as exc:
        stack.stop()
        fail(exc)
    stack.stop()
    console.print("stopped")


@app.command()
def demo(
    records: int = typer.Option(2000, help="How many sample orders to generate."),
    keep: bool = typer.Option(False, help="Keep the demo's data folder from earlier runs."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run the bundled demo pipeline end to end on the embedded defaults.

    Generates sample orders (a few deliberately invalid), starts nats-server and the four services as
    separate processes, runs the `demo_orders` pipeline, and shows what was extracted, loaded and rejected,
    plus rows read back from ClickHouse (chdb).

    Example: uv run jetl demo
    """
    from jetl._internal.demo import run_demo

    s = settings()
    data_dir = (s.data_dir / "demo").resolve()
    if data_dir.exists() and not keep:
        shutil.rmtree(data_dir)
    try:
        summary = run_demo(data_dir, s.pipelines_dir, records, progress=not json_out)
    except Exception as exc:
        fail(exc)
    if json_out:
        import orjson

        console.print_json(orjson.dumps(summary, default=str).decode())
        return
    t = Table(title=f"jetl demo: pipeline {summary['pipeline']}, run {summary['run_id']}")
    for col in ("stage", "records"):
        t.add_column(col)
    for k in ("extracted", "loaded", "rejected", "filtered"):
        t.add_row(k, str(summary["counts"][k]))
    t.add_row("rows in ClickHouse", str(summary["clickhouse_rows"]))
    t.add_row("dead letters", str(summary["dead_letters"]))
    console.print(t)
    reconciles = summary["reconciles"]
    console.print(
        f"ledger: extracted = loaded + rejected + filtered: "
        f"{'[green]reconciles[/green]' if reconciles else '[red]does not reconcile[/red]'}"
    )
    if summary["rejections"]:
        console.print("[bold]rejected (first few, from the DLQ):[/bold]")
        for line in summary["rejections"][:6]:
            console.print(f"  - {line}", highlight=False)
    rows = Table(title="a few rows read back from ClickHouse (chdb)")
    if summary["sample_rows"]:
        for col in summary["sample_rows"][0]:
            rows.add_column(col)
        for r in summary["sample_rows"]:
            rows.add_row(*(str(v) for v in r.values()))
    console.print(rows)
    if not reconciles or summary["clickhouse_rows"] != summary["counts"]["loaded"]:
        err_console.print("[red]demo failed: counts do not reconcile[/red]")
        raise typer.Exit(1)
    console.print(f"[bold]see it in the dashboard:[/bold] {summary['dashboard']}", highlight=False)
