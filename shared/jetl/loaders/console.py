"""Console loader: a rich table for people, JSON lines for pipes, with a row limit."""

from __future__ import annotations

import sys
from typing import Literal

from rich.console import Console
from rich.table import Table

from jetl.messages import dumps
from jetl.protocols import LoadContext, Record


class ConsoleLoader:
    """Print batches: `style="table"` (rich) or `"jsonl"`; at most `max_rows` rows per batch."""

    def __init__(self, *, style: Literal["table", "jsonl", "auto"] = "auto", max_rows: int = 20) -> None:
        self.style = style
        self.max_rows = max_rows

    def __repr__(self) -> str:
        return f"ConsoleLoader(style={self.style!r})"

    def describe(self) -> str:
        """Where output goes."""
        return "console"

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Print up to `max_rows` records of the batch; all count as loaded."""
        style = self.style
        if style == "auto":
            style = "table" if sys.stdout.isatty() else "jsonl"
        shown = records[: self.max_rows]
        if style == "jsonl":
            out = sys.stdout.buffer
            for r in shown:
                out.write(dumps(r) + b"\n")
            out.flush()
        else:
            table = Table(title=f"{ctx.pipeline} {ctx.batch_id} ({len(records)} rows)")
            cols = list(shown[0]) if shown else []
            for c in cols:
                table.add_column(c)
            for r in shown:
                table.add_row(*(str(r.get(c, "")) for c in cols))
            Console().print(table)
        return len(records)
