"""Shared machinery for transformers that reject single records instead of failing a batch."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from jetl.errors import RecordIssue


def issues_from_validation(exc: ValidationError, records: list[Any], *, batch: bool = True) -> dict[int, RecordIssue]:
    """Per record index, the first field error of a batch-wide (`list[Model]`) validation error."""
    out: dict[int, RecordIssue] = {}
    for err in exc.errors(include_url=False):
        loc = list(err.get("loc", ()))
        if batch:
            if not loc or not isinstance(loc[0], int):
                continue
            index, rest = loc[0], loc[1:]
        else:
            index, rest = 0, loc
        if index in out:
            continue
        field = ".".join(str(p) for p in rest) or "<record>"
        record = records[index] if 0 <= index < len(records) else None
        out[index] = RecordIssue(
            index=index, field=field, message=err.get("msg", "invalid"), input=err.get("input"), record=record
        )
    return out
