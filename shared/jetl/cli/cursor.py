"""`jetl cursor show|set|reset`: see and seed a pipeline's incremental cursor (logic in jetl.ops.cursors).

A cursor moves only forward, and only when its run completes; `set` and `reset` are the operator's explicit
exceptions, each logged as a `cursor.changed` event with who (`--by`) and why (`--reason`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, client, one_pipeline, run_async, settings
from jetl.cli._output import EXIT_USAGE, console, die, print_json

if TYPE_CHECKING:
    from jetl.events import CursorChanged


cursor_app = typer.Typer(
    rich_markup_mode=None, help="Show, set or reset a pipeline's incremental cursor.", no_args_is_help=True
)

_BY = typer.Option("", "--by", help="Who makes the change (default: the OS user).")
_REASON = typer.Option(..., "--reason", help="Why (required; kept in the event log).")
_EXTRACTOR = typer.Option(
    None, "--extractor", help="Which extractor, by index (0 is the first): needed when several keep a cursor."
)
_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _report(ev: CursorChanged, json_out: bool) -> None:
    from jetl.ops import cursors

    if json_out:
        print_json(ev.model_dump(mode="json"))
        return
    console.print(
        f"{ev.pipeline}: cursor {ev.action} by {ev.by} ({ev.reason}): "
        f"{cursors.cursor_text(ev.previous)} -> {cursors.cursor_text(ev.cursor)}"
    )


@cursor_app.command("show")
def show(pipeline: str = typer.Argument(..., help="Pipeline name."), json_out: bool = _JSON) -> None:
    """Print the cursor the pipeline's next run starts from (none: from the beginning, or `initial`).

    Example: jetl cursor show orders
    """
    from jetl.ops import cursors

    async def _go() -> dict[str, Any] | None:
        async with client() as jc:
            return await cursors.show_cursor(jc, pipeline)

    cursor = run_async(_go())
    if json_out:
        print_json({"pipeline": pipeline, "cursor": cursor})
    elif cursor is None:
        console.print(f"{pipeline}: no cursor; the next run starts from the beginning (or the extractor's initial)")
    else:
        console.print(f"{pipeline}: {cursors.cursor_text(cursor)}")
        print_json(cursor)


@cursor_app.command("set")
def set_(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    value: str = typer.Argument(None, help="The cursor value: the next run reads what comes strictly after it."),
    from_destination: bool = typer.Option(
        False, "--from-destination", help="Use the largest value of the cursor field in the destination."
    ),
    key: str = typer.Option(None, "--key", help="The tie-breaker's value at VALUE: rows after it are read too."),
    reason: str = _REASON,
    by: str = _BY,
    extractor: int = _EXTRACTOR,
    json_out: bool = _JSON,
) -> None:
    """Seed the cursor: the next run extracts only rows strictly after VALUE (or the destination's max).

    For a pipeline that loaded before it was incremental: seed it, and its next run reads only what is new.

    Example: jetl cursor set orders --from-destination --reason "incremental from now on"
    """
    from jetl.ops import cursors

    if (value is None) == (not from_destination):
        die("give a VALUE or --from-destination (one of them)", "jetl cursor set --help", EXIT_USAGE)
    p = one_pipeline(settings(), pipeline)

    async def _go() -> CursorChanged:
        async with client() as jc:
            if from_destination:
                return await cursors.set_from_destination(jc, p, by=by, reason=reason, extractor=extractor)
            typed_key = None if key is None else cursors.parse_value(key)
            return await cursors.set_cursor(
                jc, p, cursors.parse_value(value), by=by, reason=reason, extractor=extractor, key=typed_key
            )

    _report(run_async(_go()), json_out)


@cursor_app.command("reset")
def reset(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    reason: str = _REASON,
    by: str = _BY,
    extractor: int = _EXTRACTOR,
    json_out: bool = _JSON,
) -> None:
    """Forget the cursor (all of it, or one extractor's): the next run starts from the beginning.

    Example: jetl cursor reset orders --reason "source table rebuilt"
    """
    from jetl.ops import cursors

    p = one_pipeline(settings(), pipeline)

    async def _go() -> CursorChanged:
        async with client() as jc:
            return await cursors.reset_cursor(jc, p, by=by, reason=reason, extractor=extractor)

    _report(run_async(_go()), json_out)


app.add_typer(cursor_app, name="cursor")
