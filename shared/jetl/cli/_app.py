"""The typer app, shared options and the one error handler (one clear line plus a hint; tracebacks with --debug)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jetl.errors import ConfigError, JetlError, TransientError
from jetl.settings import JetlSettings

if TYPE_CHECKING:
    from jetl.events import Event
    from jetl.projection import RunState

T = TypeVar("T")

app = typer.Typer(
    name="jetl",
    help="jetl: pipelines as plain Python, four services over NATS JetStream, an event log that replays.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

# Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_FAILED = 1  # the thing ran and failed (a run failed, health is bad)
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_UNAVAILABLE = 3  # NATS or a destination could not be reached

_state: dict[str, Any] = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


def settings() -> JetlSettings:
    """The settings in force for CLI commands."""
    return JetlSettings()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning jetl errors into one line and an exit code."""
    try:
        return asyncio.run(coro)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        fail(exc)
        raise  # unreachable


def fail(exc: BaseException) -> None:
    """Print an error as one line with a hint, and exit with the matching code."""
    if _state["debug"]:
        raise exc
    code, hint = EXIT_FAILED, ""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, JetlError) else str(exc)
    if isinstance(exc, ConfigError):
        code, hint = EXIT_USAGE, "check the pipeline module or setting it names (jetl validate)"
    elif (
        isinstance(exc, TransientError)
        or "nats" in type(exc).__module__
        or isinstance(exc, (ConnectionError, OSError, TimeoutError))
    ):
        code, hint = (
            EXIT_UNAVAILABLE,
            "is NATS running? `jetl up` starts one; JETL_NATS__URL points elsewhere",
        )
    err_console.print(f"[red]error:[/red] {text}", highlight=False)
    if hint:
        err_console.print(f"[dim]hint: {hint}[/dim]", highlight=False)
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the `jetl` script."""
    try:
        app()
    except (typer.Exit, SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # raised outside run_async (sync commands): one line, traceback with --debug
        try:
            fail(exc)
        except typer.Exit as e:
            sys.exit(e.exit_code)


@contextmanager
def progress(show: bool, what: str, total: int | None, *, out: Console | None = None) -> Iterator[Callable[..., None]]:
    """A transient progress bar on a terminal, a no-op updater otherwise: update(completed=, total=, advance=,
    description=, info=)."""
    out = out or console
    if not show or not out.is_terminal:
        yield lambda **_: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, transient=True, console=out) as bar:
        task = bar.add_task(what, total=total, info="")
        yield lambda **kw: bar.update(task, **kw)


def follow(update: Callable[..., None]) -> Callable[[Event, RunState], None]:
    """An on_event callback that moves a `progress` bar by the run's settled batches."""

    def on_event(ev: Event, st: RunState) -> None:
        done = sum(1 for b in st.batches.values() if b.outcome != "pending")
        update(
            total=st.expected_batches,
            completed=done,
            info=f"extracted={st.extracted} loaded={st.loaded} rejected={st.rejected}",
        )

    return on_event
