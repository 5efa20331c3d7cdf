"""A clean batch written to a pipeline's loader: validated against the schema, written with its id, and, for a
replayed batch, the rows of the parent batch it replaces deleted (`load_replacing_parent`). The loader service does
this with every clean batch; `bench/` runs it alone to measure it."""

from __future__ import annotations

from jetl.messages.models import Batch
from jetl.pipeline import Pipeline
from jetl.protocols import ArrowLoader, LineageLoader, LoadContext, Loader
from jetl.records import from_ipc, records_adapter


def load_batch(pipeline: Pipeline, batch: Batch, body: bytes, loader: Loader | None = None) -> int:
    """Validate the batch against the schema (the whole batch at once), then write it with its batch id to `loader`
    (default: the pipeline's own; a replay's shadow otherwise); return the rows written. It deletes nothing."""
    adapter = records_adapter(pipeline.schema)
    lctx = LoadContext(
        pipeline=batch.pipeline,
        run_id=batch.run_id,
        batch_id=batch.batch_id,
        schema=pipeline.schema,
        part_id=batch.part_id,
        version=batch.version,
    )
    dest = pipeline.loader if loader is None else loader
    if batch.encoding == "arrow":
        table = from_ipc(body)
        if isinstance(dest, ArrowLoader):  # typed columns: checking their types is validating them (jetl.records)
            adapter.check_arrow(table)
            n: int = dest.load_arrow(table, lctx)
        else:
            n = dest.load(adapter.validate_python(table.to_pylist()), lctx)
    else:
        n = dest.load(adapter.validate_json(body), lctx)  # model_dump()'s dicts, no model objects
    return n


def supersede(pipeline: Pipeline, batch: Batch) -> None:
    """After a replayed batch is written to the real destination, remove the parent batch it replaces: once, with
    the last part of a batch in parts (they are published in order, so that part usually comes last)."""
    last = batch.part == batch.parts - 1
    if batch.supersedes and last and not batch.shadow and isinstance(pipeline.loader, LineageLoader):
        pipeline.loader.remove_batch(batch.pipeline, batch.supersedes)


def load_replacing_parent(pipeline: Pipeline, batch: Batch, body: bytes, loader: Loader | None = None) -> int:
    """`load_batch`, then, when the batch is a replayed one that supersedes a batch of its parent run, delete the
    rows that parent batch wrote (`supersede`): the replay replaces its parent batch by batch. Return the rows
    written."""
    n = load_batch(pipeline, batch, body, loader)
    supersede(pipeline, batch)
    return n
