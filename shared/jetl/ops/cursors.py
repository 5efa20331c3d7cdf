"""Operators' hands on incremental cursors: show one, set it (to a value, or to the destination's max of the cursor
field), reset it. `jetl cursor` prints these; a dashboard can call the same functions.

The rule: a cursor moves only forward, and only when its run completes (the tracker); `set` and `reset` are the one
exception, explicit operator actions, each a `cursor.changed` event in the log with who and why, so `jetl status
--rebuild` keeps them. They are refused while a run of the pipeline is unfinished: that run would overwrite them.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jetl.errors import ConfigError
from jetl.events import CursorChanged
from jetl.positions import EACH
from jetl.positions import cursor_text as cursor_text
from jetl.protocols import SeekableExtractor, keeps_cursor
from jetl.state import delete_cursor, get_cursor, put_cursor, unfinished_runs

if TYPE_CHECKING:
    from jetl.ops.client import JetlClient
    from jetl.pipeline import Pipeline


def default_operator() -> str:
    """Who is changing a cursor when `--by` is not given: the OS user."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment (a bare container): say so rather than guess
        return "unknown"


def parse_value(text: str) -> Any:
    """A cursor value typed from the command line: an integer, a decimal number, else the text (ISO-8601
    timestamps stay text; each extractor reads them as its source compares them)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _incremental(p: Pipeline) -> list[int]:
    return [i for i, e in enumerate(p.extractors) if keeps_cursor(e)]


def pick_extractor(p: Pipeline, index: int | None) -> int:
    """The extractor a change is for: `index`, or the pipeline's one incremental extractor."""
    incremental = _incremental(p)
    if index is None:
        if len(incremental) != 1:
            raise ConfigError(
                f"pipeline {p.name!r} has {len(incremental)} extractors that keep a cursor "
                f"(indexes {incremental}); say which with --extractor N"
            )
        return incremental[0]
    if index not in incremental:
        raise ConfigError(f"pipeline {p.name!r}: extractor {index} keeps no cursor (those that do: {incremental})")
    return index


def cursor_field(p: Pipeline, index: int) -> str:
    """The record field extractor `index`'s cursor follows (its `cursor_field`)."""
    extractor = p.extractors[index]
    name = extractor.cursor_field if isinstance(extractor, SeekableExtractor) else None
    if not isinstance(name, str):
        raise ConfigError(f"pipeline {p.name!r}: extractor {index} does not say which field its cursor follows")
    return name


def with_part(
    p: Pipeline, stored: dict[str, Any] | None, index: int, part: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The pipeline's whole cursor with extractor `index`'s part replaced (None: removed)."""
    if len(p.extractors) == 1:
        return part
    each = dict(stored[EACH]) if stored is not None and isinstance(stored.get(EACH), dict) else {}
    if stored is not None and EACH not in stored:  # the single form was every extractor's: keep it for the others
        each = {str(i): stored for i in _incremental(p)}
    if part is None:
        each.pop(str(index), None)
    else:
        each[str(index)] = part
    return {EACH: each} if each else None


async def holding_runs(jc: JetlClient, p: Pipeline) -> dict[str, tuple[datetime, Any]]:
    """{run_id: (requested_at, its state or None)} of `p`'s unfinished runs that will still move its cursor: all of
    them, or under `Pipeline.cursor_at_extraction` those not extracted yet."""
    running, _ = await unfinished_runs(await jc.kv(), p.name, datetime.now(UTC))
    return {run_id: (at, state) for run_id, (at, state) in running.items() if p.holds_cursor(state)}


async def _refuse_unfinished(jc: JetlClient, p: Pipeline) -> None:
    running = await holding_runs(jc, p)
    if running:
        raise ConfigError(
            f"pipeline {p.name!r} has unfinished runs ({', '.join(sorted(running))}): a run moves the cursor "
            "when it completes and would overwrite this change; wait for it (jetl status) and try again"
        )


async def _change(
    jc: JetlClient, p: Pipeline, action: Any, cursor: dict[str, Any] | None, by: str, reason: str
) -> CursorChanged:
    if not reason.strip():
        raise ConfigError("a cursor change needs a reason (--reason)", hint="")
    await _refuse_unfinished(jc, p)
    kv = await jc.kv()
    previous = await get_cursor(kv, p.name)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    ev = CursorChanged(
        pipeline=p.name,
        run_id=f"cursor-{stamp}",
        service="cli",
        code_hash=p.code_hash,
        action=action,
        cursor=cursor,
        previous=previous,
        by=by or default_operator(),
        reason=reason.strip(),
    )
    # the log first: a change that reached the store is always in the log to rebuild from
    await (await jc.bus()).event(ev)
    if cursor is None:
        await delete_cursor(kv, p.name)
    else:
        await put_cursor(kv, p.name, cursor)
    return ev


async def show_cursor(jc: JetlClient, pipeline: str) -> dict[str, Any] | None:
    """The pipeline's stored cursor (None: its next run starts from the beginning, or from `initial`)."""
    return await get_cursor(await jc.kv(), pipeline)


async def set_cursor(
    jc: JetlClient,
    p: Pipeline,
    value: Any,
    *,
    by: str,
    reason: str,
    extractor: int | None = None,
    key: Any = None,
) -> CursorChanged:
    """Seed extractor `extractor`'s cursor so its next run reads only what comes strictly after `value` (and
    `key`, the tie-breaker's value: None takes every row at `value` as read)."""
    index = pick_extractor(p, extractor)
    seekable = p.extractors[index]
    if not isinstance(seekable, SeekableExtractor):
        raise ConfigError(f"pipeline {p.name!r}: extractor {index} cannot be given a cursor value")
    part = seekable.cursor_at(value, key)
    stored = await get_cursor(await jc.kv(), p.name)
    return await _change(jc, p, "set", with_part(p, stored, index, part), by, reason)


async def set_from_destination(
    jc: JetlClient, p: Pipeline, *, by: str, reason: str, extractor: int | None = None
) -> CursorChanged:
    """Seed the cursor from the destination: the last row there in (cursor field, tie-breaker) order, as the loader
    finds it. The tie-breaker is the extractor's, else the pipeline's single-field primary key; with neither, every
    row at the largest value counts as loaded."""
    index = pick_extractor(p, extractor)
    name = cursor_field(p, index)
    seekable = p.extractors[index]
    tie = seekable.cursor_tie_breaker if isinstance(seekable, SeekableExtractor) else None
    if tie is None and len(p.primary_key) == 1:
        tie = p.primary_key[0]
    tie = tie if isinstance(tie, str) and tie in p.schema.model_fields else None
    position = await jc.destination_max(p.name, name, tie)
    if position is None:
        raise ConfigError(f"pipeline {p.name!r}: the destination holds no {name!r} value to seed the cursor from")
    value, key = position
    return await set_cursor(jc, p, value, by=by, reason=reason, extractor=index, key=key)


async def reset_cursor(
    jc: JetlClient, p: Pipeline, *, by: str, reason: str, extractor: int | None = None
) -> CursorChanged:
    """Forget the cursor (one extractor's, or all of them): the next run starts from the beginning."""
    stored = await get_cursor(await jc.kv(), p.name)
    cursor = None if extractor is None else with_part(p, stored, pick_extractor(p, extractor), None)
    return await _change(jc, p, "reset", cursor, by, reason)
