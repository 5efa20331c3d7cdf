"""The transformer stage: raw batch in, transformers in order, schema validation over the whole batch, clean out.

Records that fail a transformer or the schema go to the DLQ with pipeline, origin (file:line), field and reason;
the rest of the batch goes on. A clean batch larger than a message travels in parts (`Batch.part`), and a record
too large for any message is dead-lettered by reference. A batch that cannot be transformed at all is
dead-lettered whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from faststream.nats import NatsRouter
from pydantic import ValidationError

from jetl.errors import RecordError, RecordIssue, SchemaMismatch
from jetl.events import BatchRejected, BatchTransformed
from jetl.logging import bound_contextvars, get_logger
from jetl.messages import (
    MALFORMED_INPUT,
    PAYLOAD_HEADROOM,
    DeadLetter,
    Encoding,
    cut_body,
    dumps,
    read_records,
    too_large,
)
from jetl.pipeline import Pipeline
from jetl.records import RecordsAdapter, records_adapter, to_ipc
from jetl.registry import get_pipeline, get_pipeline_registry
from jetl.runtime import heap
from jetl.runtime.service import ServiceContext, stage_subscriber
from jetl.runtime.stage import open_batch, reject_batch, settle
from jetl.subjects import Kind
from jetl.transformers._base import issues_from_validation
from jetl.transformers.type_ import TypeTransformer
from jetl_transformer.settings import TransformerSettings

log = get_logger("jetl.transformer")


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
    if not transformers or not callable(getattr(pipeline.loader, "load_arrow", None)):
        return None
    first, rest = transformers[0], transformers[1:]
    if not isinstance(first, TypeTransformer) or first.by_alias:
        return None
    if not all(getattr(t, "takes_arrow", False) is True for t in rest):
        return None
    reader, schema = records_adapter(first.model), records_adapter(pipeline.schema)
    if not reader.reads_json_lines or not schema.reads_json_lines:
        return None
    return ArrowPath(reader, tuple(rest), schema)


def run_transformers(
    pipeline: Pipeline, body: bytes, count: int | None = None, *, in_place: bool = True, arrow_json: bool = True
) -> tuple[bytes, Encoding, int, int, list[RecordIssue]]:
    """Apply the pipeline's transformers to a raw batch's records (a JSON array of `count`), then validate against
    the schema; (clean body, its encoding, records in, records out, issues).

    A JSON text of the batch that is not one object (a malformed line the extractor passed on unparsed) is an issue
    of its own, with its position in the batch. Records fresh from JSON belong to this call alone, so transformers
    that can (`transform_in_place`) change them instead of copying them; when one of those says a record failed, the
    batch runs again copying (`in_place=False`), so that every issue shows the record as it came in.

    With `arrow_json`, a batch of a flat pipeline (`arrow_path`) is first kept as an Arrow table all the way; any
    batch that does not give exactly the same table that way goes the pydantic way below."""
    path = arrow_path(pipeline) if arrow_json and count is not None else None
    if path is not None and count is not None:
        table = path.run(body, count)
        if table is not None:
            return to_ipc(table), "arrow", count, count, []
    issues: list[RecordIssue] = []
    positions: list[int] | None = None  # record i of the decoded batch was element positions[i] of the body
    aligned = True  # while True, record i of `out` is still record i of the decoded batch (so its origin is known)
    transformers = list(pipeline.transformers)
    # A leading TypeTransformer validates the JSON itself, in one pydantic pass with no intermediate dicts (None when
    # a record fails: the records are parsed then, and it runs on them to say which and why).
    from_json = getattr(transformers[0], "transform_json", None) if transformers else None
    out: list[dict[str, Any]] | None = from_json(body) if callable(from_json) else None
    if out is not None and (count is None or len(out) == count):
        transformers = transformers[1:]
    else:
        out, positions, unread = read_records(body, count)
        for u in unread:
            value = u.value if isinstance(u.value, str) else dumps(u.value).decode()
            issues.append(RecordIssue(u.position, "", u.reason, input=value, record=value, unreadable=True))
    n_in = len(out) + len(issues)
    owned = True  # `out` holds new dicts nothing else refers to
    for t in transformers:
        n_before = len(out)
        change = getattr(t, "transform_in_place", None) if owned and in_place else None
        try:
            if callable(change):
                changed = change(out)
                if changed is None:  # a record failed, and the records are half changed: again, copying
                    return run_transformers(pipeline, body, count, in_place=False, arrow_json=False)
                out = changed  # records the caller owns (the contract of transform_in_place)
            else:
                out = t.transform(out)
                owned = False
        except RecordError as exc:
            for i in exc.issues:
                if not aligned:
                    i.index = -1
                elif positions is not None and 0 <= i.index < len(positions):
                    i.index = positions[i.index]
                issues.append(i)
            out = list(exc.survivors or [])
            aligned = owned = False
            continue
        if len(out) != n_before:
            aligned = False
    # A schema of bare typed fields, bound for a loader that takes Arrow, is validated column by column into Arrow
    # IPC (1.2 us a record; the loader then skips 4-6 us of parsing, validating and converting: records.py).
    fast = records_adapter(pipeline.schema)
    arrow = fast.arrow_schema is not None and callable(getattr(pipeline.loader, "load_arrow", None))
    if arrow:
        try:
            table = fast.arrow_table(out, trusted=pipeline.trusted_fields)
            return to_ipc(table), "arrow", n_in, table.num_rows, issues
        except (ValueError, TypeError, KeyError, OverflowError):
            pass  # some record does not fit: validating row by row says which and why
    # A schema of plain fields validates straight to dicts and orjson encodes them: 2.8 + 1.9 us a record for
    # models + dump_json -> 1.0 + 0.5 (jetl.records); any other schema keeps pydantic's own path.
    validate = fast.validate_python if fast.fast else pipeline.adapter.validate_python
    try:
        valid = validate(out)
    except ValidationError as exc:
        bad = issues_from_validation(exc, out)
        for i in bad.values():
            if not aligned:
                i.index = -1
            elif positions is not None and 0 <= i.index < len(positions):
                i.index = positions[i.index]
            issues.append(i)
        valid = validate([r for i, r in enumerate(out) if i not in bad])
    if arrow:
        with contextlib.suppress(ValueError, TypeError, KeyError, OverflowError):
            return to_ipc(fast.arrow_table(valid, validated=True)), "arrow", n_in, len(valid), issues
    if not fast.fast:
        return pipeline.adapter.dump_json(valid), "json", n_in, len(valid), issues
    try:
        return dumps(valid), "json", n_in, len(valid), issues
    except TypeError:  # what orjson cannot encode (an int beyond 64 bits), pydantic can
        valid_json = pipeline.adapter.dump_json(pipeline.adapter.validate_python(valid))
        return valid_json, "json", n_in, len(valid), issues


async def handle_raw_batch(ctx: ServiceContext, raw: Any) -> None:
    """Transform one raw batch and decide its message's ack."""
    opened = await open_batch(raw, "raw batch", Kind.RAW)
    if opened is None:
        return
    batch, body = opened
    with bound_contextvars(pipeline=batch.pipeline, run_id=batch.run_id, batch_id=batch.batch_id):
        base = ctx.batch_event_fields(batch)
        async with settle(raw, lambda exc: reject_batch(ctx, batch, body, "transform", exc, base)):
            pipeline = get_pipeline(batch.pipeline)
            base["code_hash"] = pipeline.code_hash
            if batch.schema_hash != pipeline.schema_hash and not pipeline.transformers:
                raise SchemaMismatch(
                    f"batch {batch.batch_id} was extracted under schema {batch.schema_hash}, "
                    f"pipeline now declares {pipeline.schema_hash}"
                )
            clean, encoding, n_in, n_out, issues = await asyncio.to_thread(
                run_transformers, pipeline, body, batch.count
            )
            for i in issues:
                if i.index >= 0:
                    i.origin = batch.origin(i.index)
            # A transform may grow a batch past what a message carries (the raw one fit): it is cut by bytes into
            # parts, in order, each its own message; a record too large for any message is dead-lettered by reference.
            room = ctx.bus.max_payload - PAYLOAD_HEADROOM
            pieces: list[tuple[bytes, int]] = [(clean, n_out)]
            oversized: list[tuple[int, bytes]] = []
            if len(clean) > room:
                pieces, oversized = await asyncio.to_thread(cut_body, clean, encoding, room)
                del clean
                aligned = n_out == n_in and not issues  # clean record i is raw record i: its origin is known
                if oversized:
                    await ctx.bus.dead_letter_oversized(
                        batch, "transform", [((batch.origin(i) if aligned else None) or "", r) for i, r in oversized]
                    )
            if issues:
                # Input that is not a record at all (a malformed line) is kept apart: no redrive can mend it.
                for group, error_type in (
                    ([i for i in issues if i.unreadable], MALFORMED_INPUT),
                    ([i for i in issues if not i.unreadable], "RecordError"),
                ):
                    if group:
                        await ctx.bus.dead_letter(DeadLetter.of_issues(batch, "transform", group, error_type))
                for i in issues[:5]:
                    log.warning("record rejected", reason=i.describe(batch.pipeline))
            rejected = len(issues) + len(oversized)
            if rejected:
                first = (
                    issues[0].describe(batch.pipeline)
                    if issues
                    else too_large(len(oversized[0][1]), ctx.bus.max_payload)
                )
                await ctx.bus.event(BatchRejected(**base, stage="transform", records=rejected, reason=first))
            for part, (piece, count) in enumerate(pieces):
                out = batch.model_copy(
                    update={
                        "count": count,
                        "encoding": encoding,
                        "origins": None,
                        "origin_runs": None,
                        "schema_hash": pipeline.schema_hash,
                        "schema_name": pipeline.schema.__name__,
                        "part": part,
                        "parts": len(pieces),
                    }
                )
                await ctx.bus.clean_batch(out, piece)
            filtered = n_in - n_out - len(issues)
            n_out -= len(oversized)
            await ctx.bus.event(
                BatchTransformed(
                    **{**base, "parts": len(pieces)},
                    records_in=n_in,
                    records_out=n_out,
                    rejected=rejected,
                    filtered=filtered,
                )
            )
            ctx.count("batches_transformed")
            ctx.count("records_rejected", rejected)
            log.info(
                "batch transformed",
                records_in=n_in,
                records_out=n_out,
                rejected=rejected,
                filtered=filtered,
                parts=len(pieces),
            )


def warm_up() -> None:
    """Pay the first batch's one-time costs at start-up instead of in some run's latency: importing pyarrow and,
    through its conversion of time-zone aware datetimes, pandas (2.3 s on the loaded 2-core bench host, ~0.6 s on a
    quiet 16-core one), and each registered pipeline's validators and Arrow schemas. With N replicas sharing a
    consumer, each replica paid this on the first batch it happened to take: that was the p99 of 600+ ms from 4
    replicas up (bench/README.md). Never fatal: a pipeline that cannot be prepared fails on its batch, as before."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.acero  # the flat pipelines' expressions (jetl.transformers.column.project)
    import pyarrow.json  # the flat pipelines' reader (arrow_path)

    to_ipc(pa.table({"at": pa.array([datetime.now(UTC)], type=pa.timestamp("us", tz="UTC"))}))
    try:
        pipelines = list(get_pipeline_registry().values())
    except Exception as exc:  # a pipelines folder that does not load: its runs report it
        log.debug("warm-up skipped the pipelines", error=str(exc))
        return
    for pipeline in pipelines:
        try:
            records_adapter(pipeline.schema).arrow_schema  # noqa: B018 - builds (and caches) the column validators
            pipeline.trusted_fields  # noqa: B018
            arrow_path(pipeline)
        except Exception as exc:
            log.debug("warm-up skipped a pipeline", pipeline=pipeline.name, error=str(exc))


def make_router(ctx: ServiceContext) -> NatsRouter:
    """The transformer's one subscriber: the shared durable pull consumer on JETL_RAW."""
    settings = ctx.settings if isinstance(ctx.settings, TransformerSettings) else TransformerSettings()
    warm_up()
    heap.freeze_heap()  # start-up is done: freeze what it built, collect young objects less often (jetl.runtime.heap)
    router = NatsRouter()

    stage_subscriber(
        router,
        "transformer",
        lambda raw: handle_raw_batch(ctx, raw),
        fetch_batch=settings.fetch_batch,
        fetch_timeout=settings.fetch_timeout,
    )

    return router
