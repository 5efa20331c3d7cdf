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

import itertools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import typer

from jetl.cli._tsv import tsv_lines

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from jetl.cli._console import JetlConsole


class _Lazy:
    """A console made on first use: importing rich costs `jetl --help` more than typer itself does."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            self._made = self._make()
        return getattr(self._made, name)


def _stdout() -> Any:
    from jetl.cli._console import JetlConsole

    # soft_wrap: a long line stays one line in a pipe (rich would cut it at 80 columns): grep and scripts see it whole
    return JetlConsole(soft_wrap=True)


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


console: JetlConsole = _Lazy(_stdout)  # type: ignore[assignment]
err_console: Console = _Lazy(_stderr)  # type: ignore[assignment]


def __getattr__(name: str) -> Any:  # `JetlConsole`, `table_lines` and `WIDE` live beside rich, in jetl.cli._console
    if name not in ("JetlConsole", "table_lines", "WIDE"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import jetl.cli._console as rich_side

    return getattr(rich_side, name)


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
    from jetl.errors import (
        ConfigError,
        JetlError,
        NoDeployment,
        PermissionRefused,
        StoreFull,
        WaitTimedOut,
        last_refusal,
        refused_for_room,
    )

    text = str(exc) if isinstance(exc, JetlError) else f"{type(exc).__name__}: {exc}"
    refused = exc if isinstance(exc, PermissionRefused) else last_refusal()
    if refused is not None and (refused is exc or _unavailable(exc)):  # NATS answered: with a refusal, not silence
        die(str(refused), "connect as a user whose role may do this (docs/security.md), e.g. the operator", EXIT_USAGE)
    if isinstance(exc, NoDeployment):  # the wrong server, not a bad setting: its message says what to do
        die(text, code=EXIT_UNAVAILABLE)
    if isinstance(exc, ConfigError):
        general = "check the pipeline module or setting it names (jetl validate)"
        die(text, general if exc.hint is None else exc.hint, EXIT_USAGE)
    if isinstance(exc, StoreFull):  # NATS answered: a full stream or store is no outage, and says what to raise
        die(text, "`jetl health` shows how full every stream, bucket and the archive are")
    if refused_for_room(exc) is not None:
        die(f"JetStream refused a write for want of room: {text}", "`jetl health` shows which stream or store is full")
    if isinstance(exc, WaitTimedOut) and exc.nats_up:  # NATS answers: blaming it would send people the wrong way
        die(text, "NATS is up: are the services running? `jetl health`; `jetl logs RUN` shows what they did")
    if _unavailable(exc):
        die(text, "is NATS running? `jetl up` starts one; JETL_NATS__URL points elsewhere", EXIT_UNAVAILABLE)
    die(text)


def _unavailable(exc: BaseException) -> bool:
    """An error that looks like NATS (or a destination) not answering."""
    from jetl.errors import TransientError

    return (
        isinstance(exc, TransientError)
        or "nats" in type(exc).__module__
        or isinstance(exc, (ConnectionError, OSError, TimeoutError))
    )


@contextmanager
def failing() -> Iterator[None]:
    """Argument and pipeline checks before anything runs: a JetlError is one line and its exit code, via fail()."""
    from jetl.errors import JetlError

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
    from rich.table import Table

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


_STYLED = re.compile(r"\[([a-z]+)\]([^\[\]\\]*)\[/\1?\]")
"""A cell of one markup style around plain text (`[green]completed[/]`, `[red]NO[/red]`)."""


def plain_cell(value: str) -> str | None:
    """A table cell as `jetl.cli._console` prints it in TSV (rich markup dropped, whitespace folded), without
    rich: for printable text with no markup, or one style around such text; None for anything else (rich reads it,
    and drops control characters)."""
    if not value.replace("\t", " ").replace("\n", " ").isprintable():
        return None
    if "[" in value or "\\" in value:
        m = _STYLED.fullmatch(value)
        if m is None:
            return None
        value = m.group(2)
    return " ".join(value.split())


class Rows:
    """A table of text cells (rich markup allowed) for `print_table`: the columns and rows of a rich `Table`, built
    without importing rich."""

    def __init__(self, title: str | None = None) -> None:
        self.title = title
        self.columns: list[tuple[str, str]] = []
        self.rows: list[tuple[str, ...]] = []

    def add_column(self, header: str, justify: str = "left") -> None:
        self.columns.append((header, justify))

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def table(self) -> Table:
        """The rich Table of these rows."""
        from rich.table import Table

        t = Table(title=self.title)
        for header, justify in self.columns:
            t.add_column(header, justify=justify)  # type: ignore[arg-type]
        for row in self.rows:
            t.add_row(*row)
        return t

    def tsv(self) -> list[str] | None:
        """The TSV lines `console` prints for `table()` where stdout is no terminal; None when a cell holds markup
        that only rich reads (`plain_cell`)."""
        cells = [plain_cell(v) for v in (self.title or "", *(h for h, _ in self.columns), *itertools.chain(*self.rows))]
        if any(c is None for c in cells):
            return None
        plain = [c or "" for c in cells]
        n = len(self.columns)
        rows = [tuple(plain[1 + n + i * n : 1 + n + (i + 1) * n]) for i in range(len(self.rows))]
        return tsv_lines(plain[0], plain[1 : 1 + n], rows)


def _no_terminal() -> bool:
    """Whether stdout is surely no terminal as rich's Console judges it (then tables are TSV: `JetlConsole`)."""
    if os.environ.get("TTY_COMPATIBLE") or os.environ.get("FORCE_COLOR") is not None:
        return False
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def print_table(rows: Rows) -> None:
    """Print `rows` as `console.print(rows.table())` does, without importing rich where stdout is no terminal."""
    lines = rows.tsv() if _no_terminal() else None
    if lines is None:
        console.print(rows.table())
        return
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
