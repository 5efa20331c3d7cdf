"""The typer app, its settings and the context commands share: pipelines in force, the client, run_async, progress.

`jetl --help` imports this, typer and the command modules, nothing else: every command module imports what its
commands need inside them (`bench/cli_latency.py` holds `--help` and `status` to their goals).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from jetl.cli._coerce import install as install_plain_coercion
from jetl.cli._output import EXIT_USAGE, console, debug, die, err_console, fail

if TYPE_CHECKING:
    from rich.console import Console

    from jetl.connection import NatsSettings, PlainNats
    from jetl.context import StackContext
    from jetl.events import Event
    from jetl.ops.client import JetlClient
    from jetl.pipeline import Pipeline
    from jetl.projection import RunState
    from jetl.settings import JetlSettings

T = TypeVar("T")

install_plain_coercion()  # plain options without typer's pydantic adapters (jetl.cli._coerce)

app = typer.Typer(
    name="jetl",
    help="jetl: pipelines as plain Python, four services over NATS JetStream, an event log that replays.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # plain help, as click writes it: rich's help panels import rich.markdown and friends, 2-3x the start-up of
    # `jetl --help` (bench/cli_latency.py)
    rich_markup_mode=None,
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
    from jetl.errors import forget_refusals

    forget_refusals()  # a refusal another command of this process was told of is not this command's
    debug["on"] = debug_
    _CONTEXT["explicit"] = context_
    if not debug_:  # nats-py logs a traceback per failed connect through its error callback: fail() says it once
        logging.getLogger("nats").setLevel(logging.CRITICAL + 1)


def stack_context() -> StackContext | None:
    """The stack context in force for this command, if any (see jetl.context for how it is found)."""
    import os

    from jetl.connection import env_value
    from jetl.context import find_context, read_context

    data_dir = env_value(os.environ, "data_dir")  # as JetlSettings reads it, without pydantic-settings
    path = find_context(
        _CONTEXT["explicit"],
        Path(data_dir) if data_dir is not None else None,
        warn=lambda text: err_console.print(f"warning: {text}"),
    )
    return read_context(path) if path is not None else None


def settings(ctx: StackContext | None = None, *, found: bool = False) -> JetlSettings:
    """The settings in force for CLI commands: environment variables over the stack context over defaults (`ctx`
    with `found`: the context already found)."""
    from jetl.settings import JetlSettings, settings_with_context

    ctx = ctx if found else stack_context()
    return settings_with_context(ctx.settings_values()) if ctx is not None else JetlSettings()


def nats_settings() -> NatsSettings | PlainNats:
    """`settings().nats`, read without pydantic where the environment allows (`plain_nats_settings`: no context,
    only plain text settings), else without pydantic-settings where it allows (`quick_nats_settings`): for commands
    that only read from NATS (`jetl status`)."""
    import os

    from jetl.connection import plain_nats_settings, quick_nats_settings

    ctx = stack_context()
    plain = plain_nats_settings(os.environ) if ctx is None else None
    if plain is not None:
        return plain
    context_nats = ctx.settings_values()["nats"] if ctx is not None else None
    quick = quick_nats_settings(os.environ, context_nats if isinstance(context_nats, dict) else None)
    return quick if quick is not None else settings(ctx, found=True).nats


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning jetl errors into one line and an exit code."""
    import asyncio

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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


@contextmanager
def context_environment(s: JetlSettings) -> Iterator[None]:
    """While pipeline modules are imported, the folders of the settings in force are in the environment too: a
    module's own `JetlSettings()` then reads the stack's data folder, not one relative to where the command runs.
    Variables already set win; no secret is put there."""
    import os

    values = {
        "JETL_DATA_DIR": str(Path(s.data_dir).resolve()),
        "JETL_PIPELINES_DIR": str(Path(s.pipelines_dir).resolve()),
    }
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def load_pipelines(s: JetlSettings) -> tuple[dict[str, Pipeline], dict[str, str]]:
    """Every pipeline in the configured folder, and {file: error} for the modules that are broken."""
    from jetl.registry import discover_report

    folder = Path(s.pipelines_dir)
    if not folder.is_dir():
        die(
            f"pipelines folder {folder} does not exist",
            "run from the project root, or from anywhere below a `jetl up` (its .jetl/context.json), or set "
            "JETL_PIPELINES_DIR",
            EXIT_USAGE,
        )
    with context_environment(s):
        return discover_report(folder)


def one_pipeline(
    s: JetlSettings, name: str, *, found: tuple[dict[str, Pipeline], dict[str, str]] | None = None
) -> Pipeline:
    """A pipeline by name (of `found`, else of the folder in force), or exit 2: why its module failed to load, or
    the known ones."""
    from jetl.registry import failed_module

    pipelines, errors = found or load_pipelines(s)
    if name not in pipelines:
        why = failed_module(name, errors)
        if why is not None:
            die(
                f"pipeline {name!r} failed to load: {why}",
                "fix the module; the services load it when it changes",
                EXIT_USAGE,
            )
        known = ", ".join(sorted(pipelines)) or "none"
        broken = f"; {len(errors)} module(s) failed to load (jetl validate)" if errors else ""
        die(f"no pipeline named {name!r} (known: {known}){broken}", "see `jetl list`", EXIT_USAGE)
    return pipelines[name]


def registered_pipeline(name: str) -> Pipeline | None:
    """The pipeline from the pipelines folder in force (the stack context's, from a subfolder too): its loader and
    code hash; None without a folder or such a pipeline."""
    s = settings()
    if not Path(s.pipelines_dir).is_dir():
        return None
    return load_pipelines(s)[0].get(name)


def when(text: str | None, what: str) -> datetime | None:
    """An ISO date or time option; naive means UTC."""
    if text is None:
        return None
    from jetl.errors import ConfigError

    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(
            f"{what}: {text!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T06:00)", hint=""
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)
