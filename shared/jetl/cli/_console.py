"""The rich side of the CLI's output (imported on the first print, not by `jetl --help`): the console that prints
tables the way the output can hold them (see `jetl.cli._output`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jetl.cli._tsv import tsv_lines

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
    return tsv_lines(title, headers, rows)


class JetlConsole(Console):
    """A rich Console that prints tables the way the output can hold them (see `jetl.cli._output`)."""

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
