"""What the CLI prints: the consoles, JSON for scripts, check tables, and the one way to stop with an error.

Exit codes scripts can rely on: 0 ok; 1 the thing ran and found a problem (a run failed, health is bad, a stream
differs, a migration failed); 2 bad arguments, pipelines or migration files; 3 NATS or a destination unreachable,
or a NATS without a jetl deployment (`NoDeployment`).

Tables are decided here, once, for every command: on a terminal at least `WIDE` columns wide they are drawn as
tables; on a narrower terminal each row is printed as a block of `column: value` lines; when stdout is not a
terminal (a pipe, a file) they are plain TSV (a `# title` line, a header line, one line per row, no markup), so
nothing is cut to `cus…` and `cut -f` works. Errors are one line whatever the width.
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
from rich.text import Text

from jetl.errors import (
    ConfigError,
    JetlError,
    NoDeployment,
    PermissionRefused,
    TransientError,
    WaitTimedOut,
    last_refusal,
)

WIDE = 100
"""Terminals narrower than this get tables as one field a line."""


def _cell(value: Any) -> str:
    """A table cell as plain text: markup and styles dropped, tabs and newlines folded to spaces."""
    text = Text.from_markup(value) if isinstance(value, str) else value
    plain = text.plain if isinstance(text, Text) else str(text)
    return " ".join(plain.split())


def table_lines(table: Table, *, vertical: bool) -> list[str]:
    """A rich Table as plain lines: `column: value` blocks (`vertical`) or TSV."""
    headers = [_cell(c.header) for c in table.columns]
    columns = [[_cell(v) for v in c.cells] for c in table.columns]
    rows = list(zip(*columns, strict=True)) if columns else []
    title = _cell(table.title) if table.title else ""
    if vertical:
        width = max((len(h) for h in headers), default=0)
        lines = [title] if title else []
        for row in rows:
            lines.append("")
            lines.extend(f"{h.ljust(width)}  {v}" for h, v in zip(headers, row, strict=True))
        return lines
    lines = [f"# {title}"] if title else []
    lines.append("\t".join(headers))
    lines.extend("\t".join(row) for row in rows)
    return lines


class JetlConsole(Console):
    """A rich Console that prints tables the way the output can hold them (see the module docstring)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Print like rich does, but tables as TSV when not a terminal and as field lines when narrow."""
        if not any(isinstance(o, Table) for o in objects) or (self.is_terminal and self.width >= WIDE):
            super().print(*objects, **kwargs)
            return
        for o in objects:
            if isinstance(o, Table):
                # written as is: rich would expand the tabs and wrap the lines
                self.file.write("".join(f"{line}\n" for line in table_lines(o, vertical=self.is_terminal)))
                self.file.flush()
            else:
                super().print(o, **kwargs)


# soft_wrap: a long line stays one line in a pipe (rich would cut it at 80 columns), so grep and scripts see it whole.
console = JetlConsole(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

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
    refused = exc if isinstance(exc, PermissionRefused) else last_refusal()
    if refused is not None and (refused is exc or _unavailable(exc)):  # NATS answered: with a refusal, not silence
        die(str(refused), "connect as a user whose role may do this (docs/security.md), e.g. the operator", EXIT_USAGE)
    if isinstance(exc, NoDeployment):  # the wrong server, not a bad setting: its message says what to do
        die(text, code=EXIT_UNAVAILABLE)
    if isinstance(exc, ConfigError):
        die(text, "check the pipeline module or setting it names (jetl validate)", EXIT_USAGE)
    if isinstance(exc, WaitTimedOut) and exc.nats_up:  # NATS answers: blaming it would send people the wrong way
        die(text, "NATS is up: are the services running? `jetl health`; `jetl logs RUN` shows what they did")
    if _unavailable(exc):
        die(text, "is NATS running? `jetl up` starts one; JETL_NATS__URL points elsewhere", EXIT_UNAVAILABLE)
    die(text)


def _unavailable(exc: BaseException) -> bool:
    """An error that looks like NATS (or a destination) not answering."""
    return (
        isinstance(exc, TransientError)
        or "nats" in type(exc).__module__
        or isinstance(exc, (ConnectionError, OSError, TimeoutError))
    )


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


def short_stamp(at: datetime, now: datetime | None = None) -> str:
    """A time as `11-25 10:00` in UTC, with the year (`2027-01-01 00:00`) when it is not the current one."""
    at = at.astimezone(UTC)
    year = (now or datetime.now(UTC)).astimezone(UTC).year
    return at.strftime("%m-%d %H:%M" if at.year == year else "%Y-%m-%d %H:%M")
