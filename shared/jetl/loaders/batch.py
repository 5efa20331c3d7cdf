"""A clean batch written to a pipeline's loader: validated against the schema, written with its id, and, for a
replayed batch, the rows of the parent batch it replaces deleted (`load_replacing_parent`). The loader service does
this with every clean batch; `bench/` runs it alone to measure it."""

from __future__ import annotations

from pydantic import BaseModel

from jetl.errors import ConfigError
from jetl.evolution import evolved_model
from jetl.messages.models import Batch
from jetl.pipeline import Pipeline
from jetl.protocols import ArrowLoader, EvolvingLoader, LineageLoader, LoadContext, Loader
from jetl.records import from_ipc, records_adapter


def batch_model(pipeline: Pipeline, batch: Batch) -> type[BaseModel]:
    """The model a clean batch was validated under: the pipeline's schema, evolved when the batch says so (under
    `schema_contract="evolve"` only: a batch cannot widen another pipeline's table)."""
    if not batch.evolved:
        return pipeline.schema
    if pipeline.schema_contract != "evolve":
        raise ConfigError(f"batch {batch.batch_id} is evolved, but pipeline {pipeline.name!r} does not evolve")
    return evolved_model(pipeline.schema, batch.evolved)


def load_batch(pipeline: Pipeline, batch: Batch, body: bytes, loader: Loader | None = None) -> int:
    """Validate the batch against the schema (the whole batch at once; an evolved batch against the evolved schema,
    after the destination is brought up to it), then write it with its batch id to `loader` (default: the
    pipeline's own; a replay's shadow otherwise); return the rows written. It deletes nothing."""
    model = batch_model(pipeline, batch)
    adapter = records_adapter(model)
    lctx = LoadContext(
        pipeline=batch.pipeline,
        run_id=batch.run_id,
        batch_id=batch.batch_id,
        schema=model,
        part_id=batch.part_id,
        version=batch.version,
    )
    dest = pipeline.loader if loader is None else loader
    if batch.evolved and isinstance(dest, EvolvingLoader):
        dest.evolve(pipeline.schema, dict(batch.evolved))
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
