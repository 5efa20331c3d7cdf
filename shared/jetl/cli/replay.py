"""`jetl replay`: runs again from their raw batches through the current code, optionally diffed in a shadow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, client, follow, progress, registered_pipeline, run_async, when
from jetl.cli._output import EXIT_FAILED, console, failing, print_json
from jetl.cli.runs import state_json

if TYPE_CHECKING:
    from jetl.projection import RunState


@app.command()
def replay(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    run: list[str] = typer.Option(None, "--run", help="Run id to replay (repeatable)."),
    since: str = typer.Option(None, "--since", help="Replay every completed run requested at or after this (ISO)."),
    until: str = typer.Option(None, "--until", help="... and before this (ISO)."),
    diff: bool = typer.Option(False, "--diff", help="Load into a shadow and report rows added/removed/changed."),
    keep_shadow: bool = typer.Option(False, "--keep-shadow", help="With --diff: keep the shadow table/folder."),
    sample: int = typer.Option(10, "--sample", min=0, help="With --diff: how many keys to show per kind."),
    timeout: float = typer.Option(600, help="Seconds to wait for each replay."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Replay runs from their raw batches through the current transformers and loader, without re-extracting.

    Each replay reads the parent run's raw batches back out of JETL_RAW and is a new run linked to its parent.

    Without --diff each replayed batch replaces its parent batch in the destination (for append and merge tables
    alike, rows the new code drops go too). With --diff nothing touches the real destination: rows go to a shadow,
    are compared with what the parent loaded (by the table's order_by key), and the shadow is dropped.

    Example: jetl replay orders --run orders-20261125T0000Z --diff
    """
    from jetl.errors import ConfigError
    from jetl.protocols import LineageLoader

    with failing():
        if not run and since is None and until is None:
            raise ConfigError("name a run (--run RUN) or a time range (--since/--until)", hint="")
        lo, hi = when(since, "--since"), when(until, "--until")
        p = registered_pipeline(pipeline)
        if diff and p is not None and not isinstance(p.loader, LineageLoader):
            raise ConfigError(f"pipeline {pipeline!r}: {p.loader!r} cannot load a shadow, so --diff is not possible")

    async def _go(update: Callable[..., None]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with client() as jc:
            parents = list(run or [])
            if lo is not None or hi is not None:
                for r in reversed(await jc.runs(pipeline)):
                    at = r.requested_at or r.started_at
                    if (
                        r.status == "completed"
                        and not r.shadow
                        and at is not None
                        and (lo is None or at >= lo)
                        and (hi is None or at < hi)
                        and r.run_id not in parents
                    ):
                        parents.append(r.run_id)
            if not parents:
                raise ConfigError(
                    f"no completed runs of {pipeline!r} in that range (see `jetl status {pipeline}`)", hint=""
                )
            for parent in parents:
                state: RunState = await jc.replay(
                    pipeline,
                    parent,
                    shadow=diff,
                    timeout=timeout,
                    code_hash=p.code_hash if p else "",
                    on_event=follow(update),
                )
                row: dict[str, Any] = {"parent_run_id": parent, **state_json(state)}
                if diff and state.status == "completed":
                    row["diff"] = asdict(
                        await jc.diff(pipeline, state.run_id, parent, drop=not keep_shadow, sample=sample)
                    )
                out.append(row)
        return out

    with progress(not json_out, f"replay {pipeline}", None) as update:
        rows = run_async(_go(update))
    if json_out:
        print_json(rows if len(rows) > 1 or not run or len(run) > 1 else rows[0])
    else:
        for r in rows:
            console.print(
                f"replay of [bold]{r['parent_run_id']}[/bold] as {r['run_id']}: {r['status']}, "
                f"extracted {r['extracted']}, loaded {r['loaded']}, rejected {r['rejected']}, "
                f"filtered {r['filtered']}" + (f" [red]{r['error']}[/red]" if r["error"] else "")
            )
            if "diff" in r:
                d = r["diff"]
                console.print(
                    f"  against the parent (key {d['key'] or 'whole rows'}): [green]+{d['added']} added"
                    f"[/green], [red]-{d['removed']} removed[/red], [yellow]~{d['changed']} changed"
                    f"[/yellow], {d['unchanged']} unchanged"
                )
                if d["columns"]:
                    changed = ", ".join(f"{c} ({n})" for c, n in d["columns"].items())
                    console.print(f"  changed columns (rows): {changed}", highlight=False)
                for kind, keys in d["samples"].items():
                    console.print(f"  {kind}: {', '.join(map(str, keys))}", highlight=False)
    if any(r["status"] != "completed" for r in rows):
        raise typer.Exit(EXIT_FAILED)
