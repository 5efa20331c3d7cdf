"""The dashboard's actions (POST, CSRF-checked by `security`): pause, resume, run now, backfill, redrive. Each one is
written to the event log as an `operator.action` naming who did it, then done through the same library calls as
the CLI's `jetl pause`, `resume`, `run`, `backfill` and `dlq redrive`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from jetl.errors import JetlError
from jetl.ops import schedule_state
from jetl.ops.deadletters import letters_at
from jetl.ops.redrive import status_runs
from jetl.ui.pages import backfill_plan, dash, render
from jetl.ui.security import actor


def _go(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _pipeline(request: Request) -> Any:
    found, _ = dash(request).pipelines()
    return found.get(request.path_params["pipeline"])


async def pause(request: Request) -> Response:
    """Pause a pipeline's schedule."""
    d, p = dash(request), _pipeline(request)
    if p is None or p.schedule is None:
        return render(request, "missing.html", what="a scheduled pipeline of that name", status_code=404)
    await d.client.record_action(p.name, "pause", actor(request))
    await schedule_state.pause(d.client, p.name)
    return _go(f"/pipelines/{p.name}")


async def resume(request: Request) -> Response:
    """Resume a pipeline's schedule (missed slots follow its catch-up policy, or are skipped with from_now)."""
    d, p = dash(request), _pipeline(request)
    if p is None or p.schedule is None:
        return render(request, "missing.html", what="a scheduled pipeline of that name", status_code=404)
    from_now = (await request.form()).get("from_now") == "1"
    await d.client.record_action(p.name, "resume", actor(request), detail={"from_now": from_now})
    await schedule_state.resume(d.client, p, from_now=from_now)
    return _go(f"/pipelines/{p.name}")


async def run_now(request: Request) -> Response:
    """Queue a manual run and show it."""
    d, p = dash(request), _pipeline(request)
    if p is None:
        return render(request, "missing.html", what="a pipeline of that name", status_code=404)
    from jetl.ops.client import manual_run_id

    run_id = manual_run_id(p.name)
    await d.client.record_action(p.name, "run", actor(request), target_run_id=run_id)
    await d.client.request_run(p.name, run_id=run_id, code_hash=p.code_hash)
    return _go(f"/runs/{p.name}/{run_id}")


async def backfill(request: Request) -> Response:
    """Request one run per interval of the dry run the page showed (it runs on after this request returns)."""
    d, p = dash(request), _pipeline(request)
    if p is None:
        return render(request, "missing.html", what="a pipeline of that name", status_code=404)
    form = await request.form()
    start, end = str(form.get("start", "")), str(form.get("end", ""))
    try:
        slots = backfill_plan(p, start, end)
    except JetlError as exc:
        return _go(f"/pipelines/{p.name}?start={quote(start)}&end={quote(end)}&error={quote(str(exc))}")
    await d.client.record_action(
        p.name, "backfill", actor(request), detail={"start": start, "end": end, "intervals": len(slots)}
    )
    d.spawn(d.client.backfill(p.name, slots, max_parallel=1 if p.keeps_cursor else 4, code_hash=p.code_hash))
    return _go(f"/runs?pipeline={p.name}")


async def redrive(request: Request) -> Response:
    """Send dead letters back through: a selection (`seq` fields) or a whole pipeline's; without `confirmed`, show
    what would go first."""
    d = dash(request)
    form = await request.form()
    pipeline = str(form.get("pipeline", ""))
    found, _ = d.pipelines()
    p = found.get(pipeline)
    seqs = sorted({int(str(v)) for v in form.getlist("seq") if str(v).isdigit()})
    if form.get("confirmed") != "yes":
        letters = await letters_at(d.client, seqs[:200]) if seqs else []
        return render(
            request,
            "confirm.html",
            pipeline=pipeline,
            seqs=seqs,
            letters=letters,
            everything=not seqs,
            related=await status_runs(d.client, pipeline or None),
        )
    req = await d.client.request_redrive(pipeline, seqs=seqs or None, code_hash=p.code_hash if p else "")
    if req is None:
        return _go(f"/dlq?pipeline={pipeline}&note=nothing+to+redrive")
    await d.client.record_action(
        pipeline, "redrive", actor(request), target_run_id=req.run_id, detail={"dead_letters": req.redrive}
    )
    return _go(f"/runs/{pipeline}/{req.run_id}")
