"""Commands that run things: `up`, `serve`, `demo`."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, settings
from jetl.cli._output import console, err_console, fail

if TYPE_CHECKING:
    from jetl.stack.embedded import Stack


def service_factory(name: str) -> Any:
    """The app factory of a service, found through the `jetl.services` entry-point group (never imported eagerly)."""
    from importlib.metadata import entry_points

    from jetl.errors import ConfigError

    found = {ep.name: ep for ep in entry_points(group="jetl.services")}
    if name not in found:
        raise ConfigError(f"unknown service {name!r} (installed: {', '.join(sorted(found)) or 'none'})")
    return found[name].load()


@app.command()
def serve(service: str = typer.Argument(..., help="One of: extractor, transformer, loader, scheduler.")) -> None:
    """Run one service in the foreground. Start several to share its work.

    Example: JETL_NATS__URL=nats://10.0.0.5:4222 jetl serve loader
    """
    from jetl.errors import JetlError
    from jetl.stack._process import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # what it writes (data, loaded files, the chdb folder) is the user's alone
    try:
        factory = service_factory(service)
        fs_app = factory()
    except Exception as exc:
        fail(exc)
    try:
        import asyncio

        asyncio.run(fs_app.run())
    except JetlError as exc:  # e.g. no deployment after the wait: one line, not a traceback
        fail(exc)


@app.command()
def up(
    data_dir: Path = typer.Option(None, help="Where NATS, chdb and logs live (default: JETL_DATA_DIR or .jetl)."),
    nats_url: str = typer.Option(None, help="Use this NATS instead of starting the embedded one."),
    nats_cluster: int = typer.Option(
        0,
        "--nats-cluster",
        metavar="N",
        help="Start N nats-server nodes on loopback as one JetStream cluster (streams at N replicas) instead of one.",
    ),
    scale: list[str] = typer.Option(
        [],
        "--scale",
        metavar="SERVICE=N",
        help="Run N processes of a service; they share its work (repeatable).",
    ),
) -> None:
    """Start an embedded nats-server with JetStream and the four services, until Ctrl-C.

    Writes the stack context (<data>/context.json, owner-only), so commands in another shell, in this folder or
    below it, find the stack with nothing exported; keeps the NATS port from start to start while it is free.
    A service or nats-server that dies is restarted with backoff (its exit code and the end of its log are printed);
    a crash loop (5 crashes in 60 s) stops the stack with exit 1. A pipeline module that fails to load is skipped
    and reported.

    Scale the stage that limits throughput with --scale: its processes bind the same durable consumer.

    Example: jetl up --scale transformer=2   (then, in another shell: jetl run orders)
    Example: jetl up --nats-cluster 3   (three nodes; a node may die and the runs go on: docs/cluster.md)
    """
    from jetl.errors import ConfigError
    from jetl.redact import redact_url
    from jetl.stack.embedded import USERS_FILE, Stack, stable_port

    s = settings()
    try:
        data = (data_dir or s.data_dir).resolve()
        replicas: dict[str, int] = {}
        for item in scale:
            name, sep, count = item.partition("=")
            if not sep or not count.strip().isdigit():
                raise ConfigError(f"--scale {item!r}: expected SERVICE=N, e.g. transformer=2", hint="")
            replicas[name.strip()] = int(count)
        stack = Stack(
            data_dir=data,
            pipelines_dir=s.pipelines_dir,
            nats_url=nats_url,
            replicas=replicas,
            nats_cluster=nats_cluster,
            nats_port=0 if nats_url else stable_port(_previous_port(data)),
        )
        stack.start()
        assert stack.nats_url is not None
        context = write_context(stack)
    except Exception as exc:
        fail(exc)
    console.print(f"NATS: [bold]{redact_url(stack.nats_url)}[/bold]; stack context: {context}")
    if stack.cluster is not None:
        replicas_env = stack.extra_env["JETL_NATS__STREAM_REPLICAS"]
        console.print(
            f"NATS cluster: {len(stack.cluster.nodes)} nodes, streams at {replicas_env} replicas "
            f"(export JETL_NATS__STREAM_REPLICAS={replicas_env}); node logs in {stack.cluster.store_dir}"
        )
    if stack.credentials is not None:
        users = stack.data_dir / "nats" / USERS_FILE
        console.print(f"NATS users: {users} (owner-only); the CLI connects as user [bold]operator[/bold]")
    for change in stack.deployed:
        if change.action == "differs":
            err_console.print(f"[yellow]warning:[/yellow] {change.what} {change.name} differs: {change.detail}")
    console.print(
        f"in another shell, from {data.parent} or any folder below it, commands find this stack by themselves "
        f"(`jetl run <pipeline>`); from elsewhere: `jetl --context {data} run <pipeline>` or JETL_CONTEXT={data}",
        highlight=False,
    )
    console.print(f"services: {', '.join(stack.procs)}; logs in {stack.data_dir / 'logs'}; Ctrl-C stops")
    supervise(stack)
    console.print("stopped")


def _previous_port(data: Path) -> int | None:
    """The NATS port of the context the last `jetl up` in `data` wrote, if there is a readable one."""
    from jetl.context import CONTEXT_FILE, read_context
    from jetl.errors import ConfigError

    path = data / CONTEXT_FILE
    try:
        return read_context(path).port if path.exists() else None
    except ConfigError:
        return None


def write_context(stack: Stack) -> Path:
    """Write the stack context of a started stack: its NATS URL and the operator's credentials, when the stack
    generated them (`Stack.credentials`, kept in `<data>/nats/users.json`)."""
    from jetl.context import StackContext

    assert stack.nats_url is not None
    password = stack.credentials.password("operator") if stack.credentials is not None else None
    ctx = StackContext(
        nats_url=stack.nats_url,
        password=password,
        data_dir=stack.data_dir,
        pipelines_dir=stack.pipelines_dir.resolve(),
        stream_replicas=int(stack.extra_env["JETL_NATS__STREAM_REPLICAS"]) if stack.cluster is not None else None,
    )
    return ctx.save()


def supervise(stack: Stack) -> None:
    """Run until Ctrl-C or SIGTERM, restarting services that die (`Supervisor`); stop the stack either way."""
    from jetl.stack.embedded import Supervisor

    supervisor = Supervisor(stack)
    stop = False

    def _sig(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _sig)
    signal.signal(signal.SIGTERM, _sig)
    try:
        while not stop:
            for r in supervisor.poll():
                err_console.print(
                    f"[red]{r.what} exited with code {r.exit_code}[/red]; restarting it in {r.delay:.1f}s "
                    f"(restart {r.restarts}). The end of its log from this start:",
                    highlight=False,
                )
                err_console.print(r.log_tail or "(nothing)", markup=False, highlight=False)
            for note in supervisor.notes:
                err_console.print(f"[yellow]{note}[/yellow]", highlight=False)
            supervisor.notes.clear()
            time.sleep(0.5)
    except Exception as exc:
        stack.stop()
        fail(exc)
    stack.stop()


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
    from rich.table import Table

    from jetl.cli.demo import run_demo

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
