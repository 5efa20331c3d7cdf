"""Where a clean batch goes besides the plain case: a replay's shadow, or over the parent batch it supersedes.

- `shadow` batches (a `jetl replay --diff`) are written to the loader's shadow for their run (a side table or
  folder), never the real destination.
- A replayed batch without --diff `supersedes` its parent's batch: it is written first, then the parent batch's rows are
  removed (`jetl.loaders.batch.load_replacing_parent`). Both steps are idempotent (dedup token / part file name;
  deleting what is gone is a no-op), so a crash between them is repaired by the redelivery: never a gap, never a
  duplicate once the batch is acked. This is the same for append and merge tables: a replay replaces its parent batch by
  batch, including rows the new code no longer produces. A loader without lineage (the console) just writes; nothing it
  printed can be taken back.

A batch's `supersedes` comes over the bus, so before it deletes anything the loader checks it against the run
state (`check_supersedes`): the batch's run is a replay, and `supersedes` is a batch of that replay's own parent.
"""

from __future__ import annotations

from nats.js.kv import KeyValue

from jetl.errors import ConfigError, TerminalError, TransientError
from jetl.messages.models import Batch
from jetl.pipeline import Pipeline
from jetl.protocols import LineageLoader, Loader
from jetl.state import get_batch, get_run


def lineage(pipeline: Pipeline) -> LineageLoader:
    """The pipeline's loader as a LineageLoader, or a ConfigError naming what it cannot do."""
    if not isinstance(pipeline.loader, LineageLoader):
        raise ConfigError(
            f"pipeline {pipeline.name!r}: {pipeline.loader!r} keeps no lineage, so it cannot load a shadow "
            "(replay --diff) or count rows by run"
        )
    return pipeline.loader


class Shadows:
    """The shadow loaders of the replay runs being diffed, one per (loader, run); one per loader service, made by
    its router factory, so they live as long as the service that writes to them."""

    LIMIT = 256
    """One entry per replay run being diffed; past this many, old ones are not needed again."""

    def __init__(self) -> None:
        self._by_run: dict[tuple[int, str], Loader] = {}

    def destination(self, pipeline: Pipeline, batch: Batch) -> Loader:
        """The loader this batch is written with: the real one, or its shadow for the batch's run."""
        if not batch.shadow:
            return pipeline.loader
        key = (id(pipeline.loader), batch.run_id)
        if key not in self._by_run:
            if len(self._by_run) > self.LIMIT:
                self._by_run.clear()
            self._by_run[key] = lineage(pipeline).shadow(batch.run_id)
        return self._by_run[key]


async def check_supersedes(kv: KeyValue | None, batch: Batch) -> None:
    """Raise unless the batch's `supersedes` names a batch of the parent run of the replay that made it (a
    TransientError while the run state has not caught up with the replay, a TerminalError for a forgery)."""
    if not batch.supersedes or batch.shadow:
        return
    where = f"pipeline {batch.pipeline!r}: batch {batch.batch_id}"
    if kv is None:
        raise TransientError(f"{where}: no run state to check what it supersedes")
    state = await get_run(kv, batch.pipeline, batch.run_id)
    if state is None:
        raise TransientError(f"{where}: its run {batch.run_id!r} is not in the run state yet")
    if state.trigger != "replay" or not state.parent_run_id:
        raise TerminalError(f"{where}: supersedes {batch.supersedes!r}, but run {batch.run_id!r} is not a replay")
    parent = batch.supersedes.partition("/")[0]  # run ids are tokens: the first `/` ends it
    if parent != state.parent_run_id:
        raise TerminalError(
            f"{where}: supersedes {batch.supersedes!r}, which is not a batch of its parent run {state.parent_run_id!r}"
        )
    if await get_batch(kv, batch.pipeline, parent, batch.supersedes) is None:
        raise TerminalError(f"{where}: supersedes {batch.supersedes!r}, which its parent run never made")
