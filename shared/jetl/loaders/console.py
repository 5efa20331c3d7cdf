"""Console loader: a rich table for people, JSON lines for pipes, with a row limit.

A console cannot take a line back, so idempotency here means a redelivered batch (a batch id this loader has
already printed) is not printed again; the loader remembers the last `remember` batch ids.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import IO, TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.table import Table

from jetl.errors import ConfigError
from jetl.messages.wire import dumps
from jetl.protocols import Check, LoadContext, Record

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

Style = Literal["table", "jsonl", "auto"]


class ConsoleLoader:
    """Print batches: `style="table"` (rich) or `"jsonl"` (`"auto"`: table on a terminal); `max_rows` per batch."""

    def __init__(
        self,
        *,
        style: Style = "auto",
        max_rows: int | None = 20,
        file: IO[str] | None = None,
        remember: int = 10_000,
    ) -> None:
        if style not in ("table", "jsonl", "auto"):
            raise ConfigError(f"ConsoleLoader: style must be 'table', 'jsonl' or 'auto', got {style!r}")
        if max_rows is not None and max_rows < 0:
            raise ConfigError("ConsoleLoader: max_rows must be >= 0 (None: no limit)")
        self.style: Style = style
        self.max_rows = max_rows
        self.file = file
        self.remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"ConsoleLoader(style={self.style!r})"

    def describe(self) -> str:
        """Where output goes."""
        return "console"

    def check(self, settings: JetlSettings) -> Check:
        """Always ok: the console is always there."""
        return Check("ok", self.describe())

    def _out(self) -> IO[str]:
        return self.file if self.file is not None else sys.stdout  # looked up per call: tests swap sys.stdout

    def evolve(self, schema: type[Any], evolution: dict[str, Any]) -> list[str]:
        """Nothing to change: every record is printed with the fields it has (`jetl.evolution`)."""
        return []

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Print up to `max_rows` records of the batch (once per batch id); all count as loaded."""
        key = f"{ctx.pipeline}/{ctx.dedup_token}"
        if key in self._seen:
            return len(records)
        out = self._out()
        style = self.style
        if style == "auto":
            style = "table" if out.isatty() else "jsonl"
        shown = records if self.max_rows is None else records[: self.max_rows]
        if style == "jsonl":
            out.write("".join(dumps(r).decode() + "\n" for r in shown))
            out.flush()
        else:
            hidden = len(records) - len(shown)
            table = Table(
                title=f"{ctx.pipeline} {ctx.batch_id} ({len(records)} rows)",
                caption=f"{hidden} more rows not shown" if hidden else None,
            )
            cols = list(dict.fromkeys(k for r in shown for k in r))
            for c in cols:
                table.add_column(c)
            for r in shown:
                table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in cols))
            Console(file=out).print(table)
        self._seen[key] = None
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        return len(records)
