"""The transformer chain of a pipeline applied to a raw batch: its transformers in order, then the schema over the
whole batch, giving the clean body a loader takes (`run_transformers`). The transformer service runs it on each raw
batch; `bench/` runs it alone to measure it.

A flat pipeline's batch may stay one Arrow table from the raw JSON lines to the clean body (`ArrowPath`); any batch
that way cannot prove equal to the pydantic way goes the pydantic way (the differential property tests in
tests/services/transformer/test_arrow_json.py hold the two together).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import ValidationError

from jetl.errors import RecordError, RecordIssue
from jetl.messages.models import Encoding
from jetl.messages.wire import dumps, read_records
from jetl.pipeline import Pipeline
from jetl.protocols import ArrowLoader, InPlaceTransformer, JsonTransformer, takes_arrow
from jetl.records import RecordsAdapter, records_adapter, to_ipc
from jetl.transformers._base import issues_from_validation
from jetl.transformers.type_ import TypeTransformer


class Transformed(NamedTuple):
    """What `run_transformers` made of a raw batch."""

    body: bytes
    """The clean records, encoded."""
    encoding: Encoding
    """How `body` is encoded: "arrow" (IPC) for a loader that takes Arrow and a schema of bare typed fields."""
    records_in: int
    """Records the raw batch held (its unreadable JSON texts included)."""
    records_out: int
    """Records in `body`."""
    issues: list[RecordIssue]
    """The records rejected, by a transformer or the schema, each with where and why."""


@dataclass(frozen=True)
class ArrowPath:
    """A flat pipeline's batch kept as one Arrow table from the raw JSON lines to the clean batch: Arrow's JSON
    reader in place of the leading TypeTransformer (`RecordsAdapter.arrow_from_json_lines`), each later transformer
    on the table (`transform_arrow`), and the table conformed to the schema's own Arrow schema. Every step answers
    None where it cannot be certain of giving what the dicts way gives, and the batch then goes that way."""

    reader: RecordsAdapter
    steps: tuple[Any, ...]
    schema: RecordsAdapter

    def run(self, body: bytes, count: int) -> Any | None:
        """The batch's clean table, or None."""
        table = self.reader.arrow_from_json_lines(body, count)
        for step in self.steps:
            if table is None:
                return None
            table = step.transform_arrow(table)
        return None if table is None else self.schema.conform_arrow(table)


def arrow_path(pipeline: Pipeline) -> ArrowPath | None:
    """The pipeline's `ArrowPath` when it has one: its first transformer a TypeTransformer whose model Arrow's JSON
    reader reads exactly as validating it would (bare types, default settings), every later one able to work on a
    table (a ColumnTransformer of renames, expressions, select and drop), a schema of bare types with default
    settings too (validating a table's rows under it changes nothing but may refuse: `conform_arrow` checks what it
    would refuse), and a loader that takes Arrow."""
    transformers = pipeline.transformers
    if not transformers or not isinstance(pipeline.loader, ArrowLoader):
        return None
    first, rest = transformers[0], transformers[1:]
    if not isinstance(first, TypeTransformer) or first.by_alias:
        return None
    if not all(takes_arrow(t) for t in rest):
        return None
    reader, schema = records_adapter(first.model), records_adapter(pipeline.schema)
    if not reader.reads_json_lines or not schema.reads_json_lines:
        return None
    return ArrowPath(reader, tuple(rest), schema)


def _follow(
    where: list[int] | None, before: list[Any], after: list[Any], failed: Collection[int] = ()
) -> list[int] | None:
    """Where the records a step gave (`after`) were in the body, from where those it was given (`before`) were and
    the indices it refused: one for one when the count says so (a step that maps each record), else by identity (a
    filter hands on the dicts it keeps); None when neither tells, and the origins of later issues are unknown."""
    if where is None:
        return None
    kept = [j for j in range(len(before)) if j not in failed] if failed else range(len(before))
    if len(after) == len(kept):
        return [where[j] for j in kept]
    index = {id(r): j for j, r in enumerate(before)}
    try:
        return [where[index[id(r)]] for r in after]
    except KeyError:
        return None


def _placed(issues: Iterable[RecordIssue], where: list[int] | None) -> list[RecordIssue]:
    """`issues` of a step, each index turned from the step's input into the body's (-1: not known), so a dead letter
    keeps its record's `file:line` however many records the steps before it refused or filtered."""
    out = list(issues)
    for i in out:
        i.index = where[i.index] if where is not None and 0 <= i.index < len(where) else -1
    return out


def run_transformers(
    pipeline: Pipeline,
    body: bytes,
    count: int | None = None,
    *,
    in_place: bool = True,
    arrow_json: bool = True,
    transform: bool = True,
) -> Transformed:
    """Apply the pipeline's transformers to a raw batch's records (a JSON array of `count`), then validate against
    the schema (`Transformed`).

    A JSON text of the batch that is not one object (a malformed line the extractor passed on unparsed) is an issue
    of its own, with its position in the batch. Records fresh from JSON belong to this call alone, so transformers
    that can (`transform_in_place`) change them instead of copying them; when one of those says a record failed, the
    batch runs again copying (`in_place=False`), so that every issue shows the record as it came in. Without
    `transform` (records a redrive sends back that passed the transformers once) they are only validated.

    With `arrow_json`, a batch of a flat pipeline (`arrow_path`) is first kept as an Arrow table all the way; any
    batch that does not give exactly the same table that way goes the pydantic way below."""
    path = arrow_path(pipeline) if arrow_json and transform and count is not None else None
    if path is not None and count is not None:
        table = path.run(body, count)
        if table is not None:
            return Transformed(to_ipc(table), "arrow", count, count, [])
    issues: list[RecordIssue] = []
    transformers = list(pipeline.transformers) if transform else []
    # A leading TypeTransformer validates the JSON itself, in one pydantic pass with no intermediate dicts (None when
    # a record fails: the records are parsed then, and it runs on them to say which and why).
    first = transformers[0] if transformers else None
    out: list[dict[str, Any]] | None = first.transform_json(body) if isinstance(first, JsonTransformer) else None
    where: list[int] | None  # record i of `out` was element where[i] of the body (None: no longer known)
    if out is not None and (count is None or len(out) == count):
        transformers = transformers[1:]
        where = list(range(len(out)))
    else:
        out, positions, unread = read_records(body, count)
        where = positions if positions is not None else list(range(len(out)))
        for u in unread:
            value = u.value if isinstance(u.value, str) else dumps(u.value).decode()
            issues.append(RecordIssue(u.position, "", u.reason, input=value, record=value, unreadable=True))
    n_in = len(out) + len(issues)
    owned = True  # `out` holds new dicts nothing else refers to
    for t in transformers:
        before = out
        try:
            if owned and in_place and isinstance(t, InPlaceTransformer):
                before = list(out)  # the same dicts, for matching what comes out to what went in
                changed = t.transform_in_place(out)
                if changed is None:  # a record failed, and the records are half changed: again, copying
                    return run_transformers(
                        pipeline, body, count, in_place=False, arrow_json=False, transform=transform
                    )
                out = changed  # records the caller owns (the contract of transform_in_place)
            else:
                out = t.transform(out)
                owned = False
        except RecordError as exc:
            issues.extend(_placed(exc.issues, where))
            out = list(exc.survivors or [])
            where = _follow(where, before, out, {i.index for i in exc.issues})
            owned = False
            continue
        where = _follow(where, before, out)
    # A schema of bare typed fields, bound for a loader that takes Arrow, is validated column by column into Arrow
    # IPC (1.2 us a record; the loader then skips 4-6 us of parsing, validating and converting: records.py).
    fast = records_adapter(pipeline.schema)
    arrow = fast.arrow_schema is not None and isinstance(pipeline.loader, ArrowLoader)
    if arrow:
        try:
            table = fast.arrow_table(out, trusted=pipeline.trusted_fields)
            return Transformed(to_ipc(table), "arrow", n_in, table.num_rows, issues)
        except (ValueError, TypeError, KeyError, OverflowError):
            pass  # some record does not fit: validating row by row says which and why
    # A schema of plain fields validates straight to dicts and orjson encodes them: 2.8 + 1.9 us a record for
    # models + dump_json -> 1.0 + 0.5 (jetl.records); any other schema keeps pydantic's own path.
    validate = fast.validate_python if fast.fast else pipeline.adapter.validate_python
    try:
        valid = validate(out)
    except ValidationError as exc:
        bad = issues_from_validation(exc, out)
        issues.extend(_placed(bad.values(), where))
        valid = validate([r for i, r in enumerate(out) if i not in bad])
    if arrow:
        with contextlib.suppress(ValueError, TypeError, KeyError, OverflowError):
            return Transformed(to_ipc(fast.arrow_table(valid, validated=True)), "arrow", n_in, len(valid), issues)
    if not fast.fast:
        return Transformed(pipeline.adapter.dump_json(valid), "json", n_in, len(valid), issues)
    try:
        return Transformed(dumps(valid), "json", n_in, len(valid), issues)
    except TypeError:  # what orjson cannot encode (an int beyond 64 bits), pydantic can
        valid_json = pipeline.adapter.dump_json(pipeline.adapter.validate_python(valid))
        return Transformed(valid_json, "json", n_in, len(valid), issues)
