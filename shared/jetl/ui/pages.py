"""The dashboard's pages (GET): each gathers its data from the library (a bounded read: one page of runs or dead
letters, never a whole stream) and renders one template."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from jetl.errors import ConfigError, JetlError
from jetl.eventlog import recent_runs
from jetl.events import Event, RunStarted, SchemaDrift, SchemaEvolved
from jetl.ops.deadletters import letter_page, letter_rows, letters_at
from jetl.ops.destination import QueryResult
from jetl.ops.health import SERVICE_NAMES, ago, freshness, gather_health, service_beats
from jetl.ops.ledger import audit_rows, ledger_report
from jetl.ops.redrive import dead_letter_status, status_runs
from jetl.ops.schedule_state import schedule_rows
from jetl.ops.schema import drift_report
from jetl.projection import RunState
from jetl.state import get_run
from jetl.ui.security import csrf_token
from jetl.ui.state import Dashboard, states_at

PAGE = 50
"""Rows per page of runs (and of one run's dead letters)."""
LETTER_ROWS = 25
"""Rejected records per page of the dead-letters page (each row holds a message and the record's JSON)."""
STAGES = ("extracted", "transformed", "loaded", "rejected", "filtered")


def templates() -> Jinja2Templates:
    """The page templates (autoescaped), with the helpers they share."""
    from pathlib import Path

    t = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    t.env.globals.update(
        stage_counts=stage_counts,
        ago_of=ago_of,
        stamp=stamp,
        STAGES=STAGES,
        batch_progress=batch_progress,
        verdict=verdict,
    )
    return t


def dash(request: Request) -> Dashboard:
    """The dashboard state of this app."""
    d: Dashboard = request.app.state.dashboard
    return d


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    """A page, with the CSRF value its forms carry and the time it took to gather."""
    started = getattr(request.state, "t0", time.perf_counter())
    context |= {
        "csrf": csrf_token(request),
        "nav": name.split(".")[0],
        "took_ms": (time.perf_counter() - started) * 1e3,
    }
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)


def stamp(value: datetime | str | None) -> str:
    """A time for people, UTC, to the second."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago_of(value: datetime | None) -> str:
    """How long ago, for people."""
    return "-" if value is None else ago((datetime.now(UTC) - value).total_seconds()) + " ago"


def stage_counts(st: RunState) -> dict[str, int]:
    """The count of each stage of a run (the bars of the runs page)."""
    c = st.counts()
    return {
        "extracted": c["extracted"],
        "transformed": st.tally.transformed,
        "loaded": c["loaded"],
        "rejected": c["rejected"],
        "filtered": c["filtered"],
    }


def batch_progress(st: RunState) -> str:
    """How far a run's batches are: settled of the count the extractor announced (from the state's tally, which the
    tracker keeps over every batch ledger; the state alone has no ledgers to count)."""
    if st.expected_batches is None:
        return f"{st.settled_batches} settled of {st.tally.batches} so far"
    return f"{st.settled_batches} of {st.expected_batches}"


def verdict(st: RunState) -> dict[str, str]:
    """The ledger's line: in flight until the run settles (a run half way does not "fail" to reconcile), then
    whether extracted = loaded + rejected + filtered."""
    if st.status in ("requested", "running"):
        return {"css": "flight", "text": "in flight"}
    return {"css": "ok", "text": "reconciles"} if st.reconciles else {"css": "fail", "text": "does not reconcile"}


def duration(st: RunState) -> float | None:
    """Seconds from request (or start) to finish."""
    begin = st.requested_at or st.started_at
    return (st.finished_at - begin).total_seconds() if st.finished_at and begin else None


# --- overview -------------------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    """Every pipeline (schedule, paused, last run, staleness) and the health tiles."""
    d = dash(request)
    found, broken = d.pipelines()
    now = datetime.now(UTC)
    checks, beats, sched = await asyncio.gather(
        gather_health(
            d.client,
            services=list(SERVICE_NAMES),
            heartbeat_timeout=15.0,
            max_lag=None,
            stale_factor=2.0,
            pipelines=found,
            timeout=0.25,
        ),
        service_beats(d.client),
        schedule_rows(d.client, sorted(found.values(), key=lambda p: p.name), 1),
    )
    next_run = {r["pipeline"]: r["next_runs"][0] if r["next_runs"] else None for r in sched}
    rows = []
    for p in sorted(found.values(), key=lambda p: p.name):
        f = await freshness(d.client, p, now, 2.0)
        rows.append({"p": p, "f": f, "next": next_run.get(p.name)})
    services = []
    for name in SERVICE_NAMES:
        seen = beats.get(name, [])
        live = [b for b in seen if time.time() - float(b.get("at", 0)) <= 15.0]
        services.append(
            {
                "name": name,
                "live": live,
                "restarts": max(0, len(seen) - len(live)) if live else len(seen),
                "up": ago(time.time() - min(float(b.get("started_at") or b["at"]) for b in live)) if live else "",
                "beat": ago(time.time() - max(float(b["at"]) for b in live)) if live else "",
            }
        )
    return render(
        request,
        "overview.html",
        rows=rows,
        broken=broken,
        nats=[c for c in checks if c.check in ("nats", "kv", "destination")],
        consumers=[c for c in checks if c.check == "consumer"],
        sources=[c for c in checks if c.check == "source"],
        services=services,
        now=time.time(),
    )


# --- runs ------------------------------------------------------------------------------------------------------


async def runs(request: Request) -> Response:
    """Recent runs, filtered by pipeline and status, a page at a time (live updates come over /live/runs)."""
    d = dash(request)
    pipeline = request.query_params.get("pipeline") or None
    status = request.query_params.get("status") or None
    before = int(request.query_params["before"]) if request.query_params.get("before", "").isdigit() else None
    index = await d.refresh_runs() if status else None
    if index is not None and status and index.complete:
        # a status pages through the dashboard's index of runs: no scan however rare the status
        seqs, next_before = index.page(pipeline, status, PAGE, before)
        page = [(q, st) for q, st in await states_at(d.nc, d.bucket, seqs) if st.status == status]
    else:
        # until the index has caught up once, a status is looked for among at most 2,000 states per page
        page, next_before = await recent_runs(
            d.nc, d.bucket, pipeline, limit=PAGE, before=before, status=status, max_scan=2_000
        )
    found, _ = d.pipelines()
    return render(
        request,
        "runs.html",
        runs=[st for _, st in page],
        next_before=next_before,
        pipeline=pipeline,
        status=status,
        pipelines=sorted(found),
        indexing=index is not None and not index.complete,
    )


def timeline(events: list[Event]) -> dict[str, Any]:
    """The Gantt chart of a run: per batch, when each stage held it (seconds from the run's first event), and the
    records loaded per second over time."""
    run_steps, batches = audit_rows(events)
    t0 = events[0].at if events else datetime.now(UTC)
    started = next((e.at for e in events if isinstance(e, RunStarted)), t0)
    bars: list[dict[str, Any]] = []
    prev_extracted = (started - t0).total_seconds()
    end = 0.0
    for b in batches:

        def at(stage: str, row: dict[str, Any] = b) -> float | None:
            steps = row.get(stage)
            return float(steps[-1]["offset_s"]) if steps else None

        ex, tr, lo, rj = at("extracted"), at("transformed"), at("loaded"), at("rejected")
        segs = []
        if ex is not None:
            segs.append(("extract", prev_extracted, ex))
            prev_extracted = ex
        if tr is not None and ex is not None:
            segs.append(("transform", ex, tr))
        done = lo if lo is not None else rj
        if done is not None and (tr if tr is not None else ex) is not None:
            segs.append(("load" if lo is not None else "reject", tr if tr is not None else ex or 0.0, done))
        end = max([end, *(s[2] for s in segs)])
        bars.append({"batch": b["batch_id"], "seq": b["seq"], "segs": segs})
    span = max(end, max((s["offset_s"] for s in run_steps), default=0.0), 0.001)
    rate: dict[int, int] = {}
    for b in batches:
        for step in b.get("loaded", []):
            sec = int(step["offset_s"])
            rate[sec] = rate.get(sec, 0) + int(step["detail"].get("records", 0))
    xs = list(range(0, int(span) + 2))
    return {
        "bars": bars,
        "span": span,
        "steps": run_steps,
        "rate": {"x": xs, "loaded": [rate.get(x, 0) for x in xs]},
    }


def schema_changes(events: list[Event]) -> dict[str, Any]:
    """A run's schema drift (`schema.drift`, summed per field as `jetl audit` does) and what evolve changed in the
    destination for it (`schema.evolved`, each change with its batch and DDL)."""
    return {
        "drift": drift_report([e for e in events if isinstance(e, SchemaDrift)]),
        "evolved": [e for e in events if isinstance(e, SchemaEvolved)],
    }


async def run_page(request: Request) -> Response:
    """One run: ledger, cursor, Gantt timeline, records/s, logs (live), dead letters, related runs."""
    d = dash(request)
    pipeline, run_id = request.path_params["pipeline"], request.path_params["run_id"]
    st = await get_run(d.bucket, pipeline, run_id)
    events = await d.client.events(run_id, pipeline)
    if st is None and events:
        st = await d.client.run_state(pipeline, run_id)
    if st is None:
        return render(request, "missing.html", what=f"run {run_id} of {pipeline}", status_code=404)
    letters = await d.refresh_letters()
    seqs = letters.per_run.get((pipeline, run_id), [])
    page = await letters_at(d.client, seqs[:PAGE])
    related = await letters.judging(d.client, page, await status_runs(d.client, pipeline))
    why = dead_letter_status(page, related)
    rows, _ = rows_page(page, why, 0, PAGE, None)
    children = [r for r in related if r.parent_run_id == run_id or (set(r.redrive) & set(seqs))]
    report = ledger_report([st], None)[0]
    return render(
        request,
        "run.html",
        st=st,
        counts=stage_counts(st),
        report=report,
        tl=timeline(events),
        schema=schema_changes(events),
        letters=rows,
        letters_total=len(seqs),
        children=children,
        cursor_from=st.start_cursor,
        duration=duration(st),
    )


# --- pipeline --------------------------------------------------------------------------------------------------


ROWS_SHOWN = 5
"""Current rows the pipeline page shows, newest first."""


async def pipeline_page(request: Request) -> Response:
    """One pipeline: charts over its last runs, next scheduled runs, pause/resume/run now, backfill."""
    d = dash(request)
    name = request.path_params["pipeline"]
    found, _ = d.pipelines()
    p = found.get(name)
    if p is None:
        return render(request, "missing.html", what=f"pipeline {name}", status_code=404)
    page, _ = await recent_runs(d.nc, d.bucket, name, limit=PAGE)
    last = sorted(
        (st for _, st in page), key=lambda st: st.requested_at or st.started_at or datetime.min.replace(tzinfo=UTC)
    )
    chart = {
        "x": list(range(1 - len(last), 1)),  # runs ago: 0 is the latest
        "loaded": [st.loaded for st in last],
        "rejected": [st.rejected for st in last],
        "duration": [duration(st) for st in last],
    }
    # the newest run whose records drifted or whose table evolved (the run state names it), read whole like its page
    changed = next((st for st in reversed(last) if st.drift or st.evolved), None)
    schema = schema_changes(await d.client.events(changed.run_id, name)) if changed is not None else None
    sched = (await schedule_rows(d.client, [p], 5)) if p.schedule is not None else []
    f = await freshness(d.client, p, datetime.now(UTC), 2.0)
    slots: list[Any] = []
    error = ""
    start, end = request.query_params.get("start", ""), request.query_params.get("end", "")
    if start and end:
        try:
            slots = backfill_plan(p, start, end)
        except JetlError as exc:
            error = str(exc)
    try:  # a few of the newest current rows, asked of the loader that owns the destination (as `jetl query`)
        rows: QueryResult | None = await d.client.recent_rows(name, ROWS_SHOWN, timeout=5.0)
        rows_error = ""
    except JetlError as exc:
        rows, rows_error = None, str(exc)
    return render(
        request,
        "pipeline.html",
        p=p,
        f=f,
        rows=rows,
        rows_error=rows_error,
        chart=chart,
        sched=sched[0] if sched else None,
        runs=list(reversed(last))[:10],
        schema_run=changed,
        schema=schema,
        slots=slots,
        start=start,
        end=end,
        error=error,
    )


def backfill_plan(p: Any, start: str, end: str) -> list[Any]:
    """The intervals (and run ids) a backfill of [start, end) requests: the dry run shown before submitting."""
    from jetl.schedule import backfill_slots

    if p.schedule is None:
        raise ConfigError(f"pipeline {p.name!r} has no schedule: a backfill splits time by its intervals")
    try:
        lo, hi = (datetime.fromisoformat(x) for x in (start, end))
    except ValueError as exc:
        raise ConfigError(f"not an ISO date or time: {exc}") from exc
    lo, hi = (x if x.tzinfo else x.replace(tzinfo=UTC) for x in (lo, hi))
    if hi <= lo:
        raise ConfigError("the end must be after the start")
    slots = backfill_slots(p.name, p.schedule, lo, hi)
    if len(slots) > 1000:
        raise ConfigError(f"{len(slots)} intervals: a backfill from the dashboard takes at most 1000")
    return slots


# --- dead letters ----------------------------------------------------------------------------------------------


async def dead_letters(request: Request) -> Response:
    """Dead letters grouped by reason with counts, and one page of them with each record's JSON and origin."""
    d = dash(request)
    pipeline = request.query_params.get("pipeline") or None
    reason = request.query_params.get("reason") or None
    start = int(request.query_params["start"]) if request.query_params.get("start", "").isdigit() else 1
    skip = int(request.query_params["skip"]) if request.query_params.get("skip", "").isdigit() else 0
    summary = await d.refresh_letters()
    next_start: int | None = None
    if reason and pipeline and (g := summary.groups.get((pipeline, reason))) is not None:
        chosen = [q for q in g.seqs if q >= start]
        page = await letters_at(d.client, chosen[:LETTER_ROWS])  # each letter holds one row at least
        next_start = chosen[LETTER_ROWS] if len(chosen) > LETTER_ROWS else None
    else:
        page, next_start = await letter_page(d.client, pipeline, start, LETTER_ROWS)
    why = dead_letter_status(page, await summary.judging(d.client, page, await status_runs(d.client, pipeline)))
    rows, next_at = rows_page(page, why, skip, LETTER_ROWS, next_start)
    return render(
        request,
        "dlq.html",
        groups=summary.top(pipeline),
        summary=summary,
        rows=rows,
        pipeline=pipeline,
        reason=reason,
        next_at=next_at,
        first_page=start <= 1 and not skip,
        pipelines=sorted(set(summary.per_pipeline) | set(dash(request).pipelines()[0])),
    )


def rows_page(
    page: list[tuple[int, Any]], why: dict[int, str | None], skip: int, limit: int, next_start: int | None
) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """At most `limit` rows (one per rejected record) of these letters, from record `skip` of the first, and where
    the next page starts: a letter's sequence and how many of its records are already shown (a letter of a whole
    batch holds hundreds of records: a page of 50 letters was a page of thousands of rows)."""
    rows: list[dict[str, Any]] = []
    for i, (seq, dl) in enumerate(page):
        first = skip if i == 0 else 0
        more = letter_rows(seq, dl, why[seq])[first:]
        room = limit - len(rows)
        if len(more) > room:
            return rows + more[:room], (seq, first + room)
        rows += more
    return rows, None if next_start is None else (next_start, 0)


# --- replay diff -----------------------------------------------------------------------------------------------


SHADOWS_ASKED = 200
"""Shadow replays per pipeline the diff page asks the loader about (the latest)."""


async def live_shadows(d: Dashboard, shadows: list[RunState]) -> list[RunState]:
    """Those shadow replays whose shadow the loader still has: `jetl replay --diff` drops it after its diff."""
    by_pipeline: dict[str, list[RunState]] = {}
    for r in sorted(shadows, key=lambda r: r.requested_at or datetime.min.replace(tzinfo=UTC), reverse=True):
        by_pipeline.setdefault(r.pipeline, []).append(r)
    asked = {p: runs[:SHADOWS_ASKED] for p, runs in by_pipeline.items()}
    answers = await asyncio.gather(*(d.client.live_shadows(p, [r.run_id for r in runs]) for p, runs in asked.items()))
    return [r for (p, runs), live in zip(asked.items(), answers, strict=True) for r in runs if r.run_id in live]


async def diff_page(request: Request) -> Response:
    """A shadow replay against its parent: added, removed and changed keys (asked of the loader). Only shadows the
    loader still has are listed and compared; a dropped one is said to be gone, not diffed as empty."""
    d = dash(request)
    pipeline = request.query_params.get("pipeline") or ""
    run_id = request.query_params.get("run") or ""
    shadows: list[RunState] = []
    result = None
    error = gone = ""
    parent = ""
    try:
        shadows = await live_shadows(d, [r for r in await status_runs(d.client, pipeline or None) if r.shadow])
    except JetlError as exc:
        error = f"the loader could not say which shadows are still there: {exc}"
    if pipeline and run_id and not error:
        st = await get_run(d.bucket, pipeline, run_id)
        parent = (st.parent_run_id if st else None) or request.query_params.get("parent") or ""
        if not parent:
            error = f"run {run_id} is not a replay (it has no parent run)"
        elif st is not None and st.shadow and all(r.run_id != run_id for r in shadows):
            gone = run_id
        else:
            try:
                result = await d.client.diff(pipeline, run_id, parent, drop=False, sample=20)
            except JetlError as exc:
                error = str(exc)
    return render(
        request,
        "diff.html",
        pipeline=pipeline,
        run_id=run_id,
        parent=parent,
        shadows=shadows,
        result=result,
        error=error,
        gone=gone,
    )


async def not_found(request: Request, exc: Exception) -> Response:
    """A 404 page in the dashboard's frame."""
    return HTMLResponse(TEMPLATES.get_template("missing.html").render(what=request.url.path, nav="", csrf=""), 404)


TEMPLATES = templates()
"""Built last: the helpers it shares are defined above."""
