"""Dedupe transformer: one record per key within a batch (across batches, use a merging loader)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from jetl.errors import ConfigError, RecordError, RecordIssue
from jetl.messages.wire import dumps
from jetl.protocols import Record


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return dumps(value)  # lists and dicts compare by their JSON text
    return value


class DedupeTransformer:
    """Keep the first or last record of each `key` within a batch; a record lacking a key field is rejected.

    Survivors keep the input order of the occurrence that was kept.
    """

    def __init__(self, key: Sequence[str], *, keep: Literal["first", "last"] = "first") -> None:
        if isinstance(key, str):
            key = [key]
        if not key or not all(isinstance(k, str) and k for k in key):
            raise ConfigError(f"DedupeTransformer: key must be a non-empty list of field names, got {key!r}")
        if keep not in ("first", "last"):
            raise ConfigError(f"DedupeTransformer: keep must be 'first' or 'last', got {keep!r}")
        self.key = list(key)
        self.keep = keep

    def __repr__(self) -> str:
        return f"DedupeTransformer(key={self.key!r}, keep={self.keep!r})"

    def output_fields(self, input_fields: frozenset[str] | None) -> frozenset[str] | None:
        """Dedupe keeps the shape of its input."""
        return input_fields

    def output_types(self, input_types: dict[str, Any]) -> dict[str, Any]:
        """Dedupe hands its input's validated fields on as they are."""
        return input_types

    def transform(self, records: list[Record]) -> list[Record]:
        """One record per key, in input order."""
        chosen: dict[tuple[Any, ...], int] = {}
        issues: list[RecordIssue] = []
        last = self.keep == "last"
        for i, rec in enumerate(records):
            missing = next((k for k in self.key if k not in rec), None)
            if missing is not None:
                issues.append(RecordIssue(i, missing, "dedupe key field is missing", record=rec))
                continue
            k = tuple(_hashable(rec[f]) for f in self.key)
            if last or k not in chosen:
                chosen[k] = i
        out = [records[i] for i in sorted(chosen.values())]
        if issues:
            raise RecordError("", issues, survivors=out)
        return out
