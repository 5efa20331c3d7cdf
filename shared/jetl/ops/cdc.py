"""Operators' commands for a pipeline that reads a source's log (change data capture, docs/cdc.md): a re-snapshot of
its table, and what pausing and resuming it means for the source.

A log reader is an extractor whose source keeps changes until told (`ConfirmingExtractor`: PostgresCDCExtractor and
its replication slot). Its first run, and every run after its cursor is forgotten, takes a snapshot of its table;
while its pipeline is paused, the source keeps the log for it. `jetl resnapshot`, `jetl pause` and `jetl resume`
call these; a dashboard can call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jetl.errors import ConfigError
from jetl.protocols import ConfirmingExtractor, SourceLag

if TYPE_CHECKING:
    from jetl.events import CursorChanged
    from jetl.ops.client import JetlClient
    from jetl.pipeline import Pipeline

LAG_TIMEOUT_S = 3.0
"""How long `jetl pause` and `resume` wait for the source to tell what its log keeps (no answer: not told)."""

DEFAULT_REASON = "re-snapshot"
"""The reason logged for a re-snapshot when none is given."""


def log_readers(p: Pipeline) -> list[int]:
    """The indexes of `p`'s extractors that read a log their source keeps until told (a CDC slot)."""
    return [i for i, e in enumerate(p.extractors) if isinstance(e, ConfirmingExtractor)]


def source_name(extractor: Any) -> str:
    """What a log reader reads, for people: `schema.table` for PostgresCDCExtractor, else its class."""
    from jetl.extractors.cdc.extractor import PostgresCDCExtractor

    if isinstance(extractor, PostgresCDCExtractor):
        return f"{extractor.schema_name}.{extractor.table_name}"
    return type(extractor).__name__


@dataclass(frozen=True)
class Resnapshot:
    """A re-snapshot done: the cursor change logged, and the run requested to take it (None: --no-run)."""

    pipeline: str
    table: str
    """What the snapshot reads (`schema.table`)."""
    changed: CursorChanged
    """The cursor.changed event in the log (action reset, with who and why)."""
    run_id: str | None

    def as_json(self) -> dict[str, Any]:
        """The machine-readable form `jetl resnapshot --json` prints."""
        return {
            "pipeline": self.pipeline,
            "table": self.table,
            "run_id": self.run_id,
            "requested": self.run_id is not None,
            "cursor_event": self.changed.run_id,
            "previous": self.changed.previous,
            "by": self.changed.by,
            "reason": self.changed.reason,
        }


def resnapshot_target(p: Pipeline) -> int:
    """The index of the extractor a re-snapshot of `p` is for, or a ConfigError saying why it has none."""
    readers = log_readers(p)
    if not readers:
        kinds = ", ".join(type(e).__name__ for e in p.extractors)
        raise ConfigError(
            f"pipeline {p.name!r} reads no table by change data capture ({kinds}): there is no snapshot to take again",
            hint=f"`jetl cursor reset {p.name} --reason ...` makes an incremental pipeline read from the beginning",
        )
    return readers[0]  # the only one: a log reader is its pipeline's only extractor (Pipeline refuses others)


async def refuse_unfinished(jc: JetlClient, p: Pipeline) -> None:
    """A ConfigError naming the pipeline's unfinished run, if it has one: that run moves the cursor when it
    completes, so a re-snapshot asked for now would be undone."""
    from jetl.ops.cursors import holding_runs

    running = await holding_runs(jc, p)  # (a run that is extracted only loads now: its cursor moved then)
    if not running:
        return
    run_id, (at, state) = min(running.items(), key=lambda item: item[1][0])
    status = state.status if state is not None else "not started"
    more = f" (and {len(running) - 1} more)" if len(running) > 1 else ""
    raise ConfigError(
        f"pipeline {p.name!r} has an unfinished run {run_id} ({status}, requested {at:%Y-%m-%d %H:%M:%S} UTC){more}: "
        "it moves the cursor when it completes and would undo the re-snapshot",
        hint=f"wait for it to finish (jetl status {p.name}), or end it (jetl runs cancel {run_id} --reason ...), "
        "then try again",
    )


async def resnapshot(jc: JetlClient, p: Pipeline, *, by: str, reason: str, run: bool = True) -> Resnapshot:
    """Make `p`'s next run take a new snapshot of its table: refuse a pipeline that reads no table by change data
    capture, or one with an unfinished run; forget its cursor (`cursors.reset_cursor`: a cursor.changed event with
    who and why, `DEFAULT_REASON` when `reason` is blank); with `run`, request that run at once, as `jetl run` does.
    The replication slot stays; the run after the snapshot reads again what it held (docs/cdc.md)."""
    from jetl.ops import cursors
    from jetl.ops.health import served_pipelines

    index = resnapshot_target(p)
    table = source_name(p.extractors[index])
    await refuse_unfinished(jc, p)
    code_hash = ""
    if run:  # a pipeline the running services did not load is refused before anything changes
        served = await served_pipelines(jc)
        code_hash = served.check(p.name) if served is not None else ""
    why = reason.strip() or DEFAULT_REASON
    changed = await cursors.reset_cursor(jc, p, by=by, reason=why, extractor=index)
    run_id = (await jc.request_run(p.name, code_hash=code_hash)).run_id if run else None
    return Resnapshot(pipeline=p.name, table=table, changed=changed, run_id=run_id)


@dataclass(frozen=True)
class SourceLog:
    """What the source keeps for one of a pipeline's log readers now: `lag` when it answered in time, else why not."""

    table: str
    lag: SourceLag | None
    unknown: str = ""

    def as_json(self) -> dict[str, Any]:
        """For `--json`: the table, the bytes kept (None: not told) and where (the slot and its position)."""
        return {
            "table": self.table,
            "retained_bytes": None if self.lag is None else self.lag.bytes,
            "detail": self.lag.detail if self.lag is not None else self.unknown,
        }


async def source_logs(p: Pipeline, timeout: float = LAG_TIMEOUT_S) -> list[SourceLog]:
    """Per log reader of `p`, the log its source keeps for it, asked for at most `timeout` seconds: a source that
    does not answer, or cannot tell (no slot yet), gives `unknown`, never an error."""
    import asyncio

    from jetl.protocols import LagExtractor

    out: list[SourceLog] = []
    for i in log_readers(p):
        extractor = p.extractors[i]
        table = source_name(extractor)
        if not isinstance(extractor, LagExtractor):
            out.append(SourceLog(table, None, "the extractor cannot tell what its source keeps"))
            continue
        try:
            out.append(SourceLog(table, await asyncio.wait_for(extractor.lag(p.name), timeout)))
        except TimeoutError:
            out.append(SourceLog(table, None, f"the source did not answer within {timeout:g}s"))
        except Exception as exc:  # the source's own words, redacted by the extractor
            out.append(SourceLog(table, None, f"{type(exc).__name__}: {exc}"))
    return out
