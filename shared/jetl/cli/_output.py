"""What the CLI prints: the consoles, JSON for scripts, check tables, and the one way to stop with an error.

Exit codes scripts can rely on: 0 ok; 1 the thing ran and found a problem (a run failed, health is bad, a stream
differs, a migration failed); 2 bad arguments, pipelines or migration files; 3 NATS or a destination unreachable,
or a NATS without a jetl deployment (`NoDeployment`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.table import Table

from jetl.errors import ConfigError, JetlError, NoDeployment, TransientError, WaitTimedOut

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_FAILED = 1  # the thing ran and failed (a run failed, health is bad)
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_UNAVAILABLE = 3  # NATS or a destination could not be reached

# Set by the root `--debug` option: errors raise with their traceback instead of one line.
debug = {"on": False}


def die(message: str, hint: str = "", code: int = EXIT_FAILED) -> NoReturn:
    """One clear error line, a hint, and an exit code."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    if hint:
        err_console.print(f"[dim]hint: {hint}[/dim]", highlight=False)
    raise typer.Exit(code)


def fail(exc: BaseException) -> NoReturn:
    """`die` for an exception: the exit code and hint follow its kind (a traceback instead with --debug)."""
    if debug["on"]:
        raise exc
    text = str(exc) if isinstance(exc, JetlError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, NoDeployment):  # the wrong server, not a bad setting: its message says what to do
        die(text, code=EXIT_UNAVAILABLE)
    if isinstance(exc, ConfigError):
        die(text, "check the pipeline module or setting it names (jetl validate)", EXIT_USAGE)
    if isinstance(exc, WaitTimedOut) and exc.nats_up:  # NATS answers: blaming it would send people the wrong way
        die(text, "NATS is up: are the services running? `jetl health`; `jetl logs RUN` shows what they did")
    if (
        isinstance(exc, TransientError)
        or "nats" in type(exc).__module__
        or isinstance(exc, (ConnectionError, OSError, TimeoutError))
    ):
        die(text, "is NATS running? `jetl up` starts one; JETL_NATS__URL points elsewhere", EXIT_UNAVAILABLE)
    die(text)


@contextmanager
def failing() -> Iterator[None]:
    """Argument and pipeline checks before anything runs: a JetlError is one line and its exit code, via fail()."""
    try:
        yield
    except JetlError as exc:
        fail(exc)


def print_json(data: Any, *, indent: bool = False) -> None:
    """Print data as one JSON document on stdout (no wrapping, no colour: for scripts); indented on request."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    print(orjson.dumps(data, default=str, option=option).decode(), flush=True)


_COLOUR = {"ok": "green", "warn": "yellow", "error": "red", "fail": "red"}


def print_checks(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...], status: str) -> None:
    """A table of check rows (validate, health), the `status` column coloured by its value."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*(f"[{_COLOUR[r[c]]}]{r[c]}[/]" if c == status else str(r[c]) for c in columns))
    console.print(t)


def stamp(at: datetime | None) -> str:
    """A time as `2026-11-25 10:00:01` in UTC, or `-`."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"
