"""Lambda transformer: a function record -> record, None (filter out) or a list (fan out); sync or async."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from jetl.errors import ConfigError, RecordError, RecordIssue
from jetl.protocols import Record

RecordFn = Callable[[Record], Record | list[Record] | Awaitable[Record | list[Record] | None] | None]


class LambdaTransformer:
    """Apply `fn` to each record. An exception in `fn` rejects that record (to the DLQ), not the batch."""

    def __init__(self, fn: RecordFn, *, name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"LambdaTransformer needs a callable, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "lambda")
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"LambdaTransformer({self.name})"

    def transform(self, records: list[Record]) -> list[Record]:
        """Apply the function; an async one runs on a private loop (the service calls this off its loop)."""
        if self.is_async:
            return asyncio.run(self.atransform(records))
        return self._collect(records, [self._call(r) for r in records])

    async def atransform(self, records: list[Record]) -> list[Record]:
        """Async variant: awaits an async function concurrently over the batch."""
        results: list[Any] = []
        for r in records:
            try:
                res = self.fn(r)
                results.append(await res if inspect.isawaitable(res) else res)
            except Exception as exc:
                results.append(exc)
        return self._collect(records, results)

    def _call(self, record: Record) -> Any:
        try:
            return self.fn(record)
        except Exception as exc:
            return exc

    def _collect(self, records: list[Record], results: list[Any]) -> list[Record]:
        out: list[Record] = []
        issues: list[RecordIssue] = []
        for i, res in enumerate(results):
            if isinstance(res, Exception):
                issues.append(
                    RecordIssue(i, "<record>", f"{self.name} raised {type(res).__name__}: {res}", record=records[i])
                )
            elif res is None:
                continue
            elif isinstance(res, list):
                out.extend(res)
            elif isinstance(res, dict):
                out.append(res)
            else:
                issues.append(
                    RecordIssue(
                        i,
                        "<record>",
                        f"{self.name} returned {type(res).__name__}, expected a dict, a list of dicts or None",
                        record=records[i],
                    )
                )
        if issues:
            raise RecordError(issues=issues, survivors=out)
        return out
