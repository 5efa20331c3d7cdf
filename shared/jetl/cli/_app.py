"""The typer app, its settings and the context commands share: pipelines in force, the client, run_async, progress."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jetl.cli._output import EXIT_USAGE, console, debug, die, err_console, fail
from jetl.context import StackContext, find_context, read_context
from jetl.errors import ConfigError, JetlError
from jetl.settings import JetlSettings, settings_with_context

if TYPE_CHECKING:
    from jetl.events import Event
    from jetl.ops.client import JetlClient
    from jetl.pipeline import Pipeline
    from jetl.projection import RunState

T = TypeVar("T")

app = typer.Typer(
    name="jetl",
    help="jetl: pipelines as plain Python, four services over NATS JetStream, an event log that replays.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# The `--context` option (or JETL_CONTEXT), set by the root callback for the command that follows.
_CONTEXT: dict[str, Path | None] = {"explicit": None}


@app.callback()
def _root(
    debug_: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    context_: Path = typer.Option(
        None,
        "--context",
        envvar="JETL_CONTEXT",
        help="The stack context to use: a context.json, or the data folder of a `jetl up` that holds one "
        "(default: JETL_DATA_DIR's, else .jetl/ here or in a parent folder).",
    ),
) -> None:
    debug["on"] = debug_
    _CONTEXT["explicit"] = context_
    if not debug_:  # nats-py logs a traceback per failed connect through its error callback: fail() says it once
        logging.getLogger("nats").setLevel(logging.CRITICAL + 1)


def stack_context() -> StackContext | None:
    """The stack context in force for this command, if any (see jetl.context for how it is found)."""
    env = JetlSettings()
    data_dir = env.data_dir if "data_dir" in env.model_fields_set else None
    path = find_context(_CONTEXT["explicit"], data_dir, warn=lambda text: err_console.print(f"warning: {text}"))
    return read_context(path) if path is not None else None


def settings() -> JetlSettings:
    """The settings in force for CLI commands: environment variables over the stack context over defaults."""
    ctx = stack_context()
    return settings_with_context(ctx.settings_values()) if ctx is not None else JetlSettings()


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
        done = st.settled_batches
        update(
            total=st.expected_batches,
            completed=done,
            info=f"extracted={st.extracted} loaded={st.loaded} rejected={st.rejected}",
        )

    return on_event


def client() -> JetlClient:
    """A JetlClient on the settings in force (imported late: most commands never talk to NATS)."""
    from jetl.ops.client import JetlClient

    return JetlClient(settings())


def load_pipelines(s: JetlSettings) -> tuple[dict[str, Pipeline], dict[str, str]]:
    """Every pipeline in the configured folder, and {file: error} for the modules that are broken."""
    from jetl.registry import discover_report

    folder = Path(s.pipelines_dir)
    if not folder.is_dir():
        die(
            f"pipelines folder {folder} does not exist",
            "run from the project root or set JETL_PIPELINES_DIR",
            EXIT_USAGE,
        )
    return discover_report(folder)


def one_pipeline(s: JetlSettings, name: str) -> Pipeline:
    """A pipeline by name, or exit 2: why its module failed to load, or the known ones."""
    from jetl.registry import failed_module

    found, errors = load_pipelines(s)
    if name not in found:
        why = failed_module(name, errors)
        if why is not None:
            die(
                f"pipeline {name!r} failed to load: {why}",
                "fix the module; the services load it when it changes",
                EXIT_USAGE,
            )
        known = ", ".join(sorted(found)) or "none"
        broken = f"; {len(errors)} module(s) failed to load (jetl validate)" if errors else ""
        die(f"no pipeline named {name!r} (known: {known}){broken}", "see `jetl list`", EXIT_USAGE)
    return found[name]


def registered_pipeline(name: str, *, required: bool) -> Any:
    """The pipeline from the local pipelines folder (schedule, code hash); None when optional and not found."""
    from jetl.registry import get_pipeline

    try:
        return get_pipeline(name)
    except JetlError:
        if required:
            raise
        return None


def when(text: str | None, what: str) -> datetime | None:
    """An ISO date or time option; naive means UTC."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {text!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T06:00)") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)
