"""`jetl backfill`: one run per schedule interval in [start, end), with the run ids the scheduler would use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, client, one_pipeline, progress, run_async, settings, when
from jetl.cli._output import EXIT_FAILED, console, err_console, failing, print_json, stamp

if TYPE_CHECKING:
    from jetl.projection import RunState


@app.command()
def backfill(
    pipeline: str = typer.Argument(..., help="Pipeline name (it needs a schedule)."),
    start: str = typer.Option(..., "--start", help="First interval start, ISO (naive = UTC): 2026-11-01."),
    end: str = typer.Option(..., "--end", help="Intervals starting before this, ISO: 2026-11-08."),
    max_parallel: int = typer.Option(4, "--max-parallel", min=1, help="Runs in flight at once."),
    timeout: float = typer.Option(3600, help="Seconds to wait for each run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list the intervals and run ids."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Run the intervals whose last attempt failed again (as <run id>-retry<n>)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one line per interval as JSON."),
) -> None:
    """Run a pipeline once per schedule interval in [start, end), with the run ids the scheduler would use.

    Running the same backfill again loads nothing twice: completed run ids are skipped, and a request that is still
    queued is deduplicated by JetStream. An interval whose run failed stays `failed earlier` until --retry-failed
    runs it again, under the next attempt's run id (`<run id>-retry1`, then -retry2 if that fails too; two people
    retrying at once make one run). Each run's extractors get the interval as data_interval_start/end.
    Runs in parallel suit extractors that read by interval; a pipeline that keeps a cursor (files already loaded,
    a high-water mark) runs one interval at a time whatever --max-parallel says, since runs in flight at once would
    all start from the same cursor.

    Example: jetl backfill daily_sales --start 2026-11-01 --end 2026-11-08 --max-parallel 2 --retry-failed
    """
    from rich.table import Table

    from jetl.errors import ConfigError
    from jetl.schedule import Slot, backfill_slots

    with failing():
        p = one_pipeline(settings(), pipeline)  # the folder in force: the stack context's from a subfolder too
        lo, hi = when(start, "--start"), when(end, "--end")
        assert lo is not None and hi is not None
        if p.schedule is None:
            raise ConfigError(f"pipeline {pipeline!r} has no schedule: a backfill splits time by its intervals")
        if hi <= lo:
            raise ConfigError("--end must be after --start", hint="")
        slots = backfill_slots(p.name, p.schedule, lo, hi)
        if p.keeps_cursor and max_parallel > 1:  # its runs must not overlap: the extractor would refuse them
            err_console.print(f"{pipeline} keeps a cursor: its runs go one at a time (--max-parallel 1)")
            max_parallel = 1
    if dry_run or not slots:
        if json_out:
            print_json([{"run_id": s.run_id, "start": s.start, "end": s.end} for s in slots])
        else:
            for s in slots:
                console.print(f"{s.run_id}  {stamp(s.start)} .. {stamp(s.end)}")
            console.print(f"{len(slots)} interval(s)")
        return

    async def _go(update: Callable[..., None]) -> dict[str, tuple[str, RunState | None]]:
        finished: dict[str, str] = {}
        loaded: dict[str, int] = {}

        def on_update(slot: Slot, st: RunState | None, outcome: str) -> None:
            if st is not None:
                loaded[slot.run_id] = st.loaded
            if outcome != "running":
                finished[slot.run_id] = outcome
            failed = sum(1 for o in finished.values() if "failed" in o)
            update(completed=len(finished), info=f"loaded={sum(loaded.values())} failed={failed}")

        async with client() as jc:
            result: dict[str, tuple[str, RunState | None]] = await jc.backfill(
                p.name,
                slots,
                max_parallel=max_parallel,
                code_hash=p.code_hash,
                timeout=timeout,
                retry_failed=retry_failed,
                on_update=on_update,
            )
            return result

    with progress(not json_out, f"backfill {pipeline}", len(slots)) as update:
        result = run_async(_go(update))
    rows: list[dict[str, Any]] = []
    for s in slots:
        outcome, st = result[s.run_id]
        rows.append(
            {
                "run_id": st.run_id if st is not None else s.run_id,  # the attempt that ran (or last failed)
                "slot_run_id": s.run_id,
                "start": s.start,
                "end": s.end,
                "outcome": outcome,
                **(st.counts() if st is not None and outcome != "skipped" else {}),
            }
        )
    if json_out:
        print_json(rows)
    else:
        t = Table(title=f"backfill {pipeline}: {len(slots)} interval(s)")
        for col in ("run", "interval", "outcome", "extracted", "loaded", "rejected"):
            t.add_column(col)
        for r in rows:
            t.add_row(
                r["run_id"],
                f"{stamp(r['start'])} .. {stamp(r['end'])}",
                r["outcome"],
                *(str(r.get(k, "")) for k in ("extracted", "loaded", "rejected")),
            )
        console.print(t)
    if any("failed" in r["outcome"] for r in rows):
        raise typer.Exit(EXIT_FAILED)
