"""Filter transformer: keep the records a predicate accepts; the rest count as filtered, not rejected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jetl.errors import ConfigError, RecordError, RecordIssue
from jetl.protocols import Record


class FilterTransformer:
    """Keep each record for which `predicate(record)` is truthy; a predicate that raises rejects it."""

    def __init__(self, predicate: Callable[[Record], Any], *, name: str | None = None) -> None:
        if not callable(predicate):
            raise ConfigError(f"FilterTransformer needs a callable, got {predicate!r}")
        self.predicate = predicate
        self.name = name or getattr(predicate, "__name__", "predicate")

    def __repr__(self) -> str:
        return f"FilterTransformer({self.name})"

    def output_fields(self, input_fields: frozenset[str] | None) -> frozenset[str] | None:
        """A filter keeps the shape of its input."""
        return input_fields

    def output_types(self, input_types: dict[str, Any]) -> dict[str, Any]:
        """A filter hands its input's validated fields on as they are."""
        return input_types

    def transform(self, records: list[Record]) -> list[Record]:
        """The records the predicate keeps, in their order."""
        out: list[Record] = []
        issues: list[RecordIssue] = []
        for i, rec in enumerate(records):
            try:
                keep = self.predicate(rec)
            except Exception as exc:
                issues.append(RecordIssue(i, "<record>", f"{self.name} raised {type(exc).__name__}: {exc}", record=rec))
                continue
            if keep:
                out.append(rec)
        if issues:
            raise RecordError(issues=issues, survivors=out)
        return out
