"""Cron scheduling with a fake clock: which slots become run requests, and when.

The slot arithmetic (`due_slots`, DST) is pure and runs in memory; `tick()` runs against a real nats-server, because
what it promises (one run per slot, a marker that survives restarts, deduplication between replicas) lives there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from jetl import ConsoleLoader, Cron, FileExtractor, Pipeline
from jetl.bus import connect
from jetl.registry import register
from jetl.runtime.service import ServiceContext, make_context
from jetl.schedule import run_id_for
from jetl.settings import JetlSettings, NatsSettings
from jetl.state import active_runs, bucket, set_paused
from jetl.subjects import Kind, stream_name
from jetl.testing.servers import NatsHandle
from jetl.topology import declare
from jetl_scheduler.cron import due_slots, make_clock, read_marker, tick

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- pure slot arithmetic ------------------------------------------------------------------------------------


def test_all_requests_every_ended_slot_in_order() -> None:
    due, marker = due_slots(Cron("*/10 * * * *", catch_up="all"), T0, at(35))
    assert due == [(at(0), at(10)), (at(10), at(20)), (at(20), at(30))]
    assert marker == at(30)


def test_a_slot_is_due_only_once_it_has_ended() -> None:
    assert due_slots(Cron("*/10 * * * *", catch_up="all"), T0, at(9.99)) == ([], T0)
    assert due_slots(Cron("*/10 * * * *", catch_up="latest"), T0, at(9.99)) == ([], T0)
    assert due_slots(Cron("*/10 * * * *", catch_up="all"), T0, at(10))[0] == [(at(0), at(10))]


def test_all_drains_a_long_backlog_a_bounded_number_per_tick() -> None:
    due, marker = due_slots(Cron("* * * * *", catch_up="all"), T0, at(500), limit=100)
    assert len(due) == 100 and due[0] == (at(0), at(1)) and marker == at(100)
    due, marker = due_slots(Cron("* * * * *", catch_up="all"), marker, at(500), limit=1000)
    assert len(due) == 400 and due[-1] == (at(499), at(500)) and marker == at(500)


def test_a_cron_with_seconds_has_slots_inside_a_minute_each_with_its_own_run_id() -> None:
    every10 = Cron("* * * * * */10", catch_up="all")
    due, marker = due_slots(every10, T0, T0 + timedelta(seconds=35))
    assert due == [(T0 + timedelta(seconds=s), T0 + timedelta(seconds=s + 10)) for s in (0, 10, 20)]
    assert marker == T0 + timedelta(seconds=30)
    ids = [run_id_for("cdc", start) for start, _ in due]
    assert ids == ["cdc-20261125T1000Z", "cdc-20261125T100010Z", "cdc-20261125T100020Z"]
    assert every10.prev_at_or_before(T0 + timedelta(seconds=20)) == T0 + timedelta(seconds=20)
    latest = due_slots(Cron("* * * * * */10", catch_up="latest"), T0, T0 + timedelta(seconds=35))
    assert latest == ([(T0 + timedelta(seconds=20), T0 + timedelta(seconds=30))], T0 + timedelta(seconds=30))
    assert run_id_for("daily", T0) == "daily-20261125T1000Z"  # minute slots keep their ids


def test_latest_skips_missed_slots_however_late() -> None:
    due, marker = due_slots(Cron("*/10 * * * *", catch_up="latest"), T0, at(3 * 60 + 5))
    assert due == [(at(170), at(180))] and marker == at(180)


def test_none_runs_only_a_slot_that_just_ended_and_skips_a_late_one() -> None:
    cron = Cron("*/10 * * * *", catch_up="none")
    assert due_slots(cron, T0, at(12), grace=timedelta(minutes=5)) == ([(at(0), at(10))], at(10))
    due, marker = due_slots(cron, T0, at(16), grace=timedelta(minutes=5))
    assert due == [] and marker == at(10)  # skipped, and the marker moves past it so it is never run late


def test_marker_at_or_after_the_latest_slot_means_nothing_is_due() -> None:
    assert due_slots(Cron("0 * * * *", catch_up="latest"), at(60), at(119)) == ([], at(60))
    assert due_slots(Cron("0 * * * *", catch_up="all"), at(60), at(119)) == ([], at(60))


def test_time_zone_shifts_the_slots() -> None:
    due, _ = due_slots(Cron("0 * * * *", tz="Asia/Kolkata", catch_up="all"), T0, at(125))
    assert due == [(at(30), at(90))]  # local minute 0 is UTC minute 30 at +05:30


def test_daily_fixed_hour_runs_once_on_dst_fall_back() -> None:
    cron = Cron("30 2 * * *", tz="Europe/Berlin", catch_up="all")
    start = datetime(2026, 10, 24, 0, 0, tzinfo=UTC)
    slots = list(cron.intervals(start, start + timedelta(days=3)))
    # 02:30 happens twice on 2026-10-25 (CEST then CET): one run, over a 25-hour interval
    assert [s.isoformat() for s, _ in slots] == [
        "2026-10-24T00:30:00+00:00",
        "2026-10-25T00:30:00+00:00",
        "2026-10-26T01:30:00+00:00",
    ]
    assert slots[1][1] - slots[1][0] == timedelta(hours=25)


def test_wildcard_hour_runs_in_both_passes_of_the_repeated_hour() -> None:
    cron = Cron("0 * * * *", tz="Europe/Berlin")
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    slots = list(cron.intervals(start, start + timedelta(hours=4)))
    assert len(slots) == 4 and all(e - s == timedelta(hours=1) for s, e in slots)


def test_daily_job_in_the_skipped_hour_runs_once_on_spring_forward() -> None:
    cron = Cron("30 2 * * *", tz="Europe/Berlin")
    start = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    slots = list(cron.intervals(start, start + timedelta(days=2)))
    assert len(slots) == 2  # 02:30 does not exist on 2026-03-29: it runs at 03:00 local, once
    assert slots[0][0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_staleness_is_measured_in_schedule_periods() -> None:
    cron = Cron("0 * * * *")
    assert not cron.is_stale(at(-90), at(0), factor=2)
    assert cron.is_stale(at(-121), at(0), factor=2)


def test_the_test_clock_runs_fast_from_its_epoch_and_replicas_agree() -> None:
    import time

    epoch = time.time()
    a, b = make_clock(epoch, 60.0), make_clock(epoch, 60.0)
    drift = abs((a() - b()).total_seconds())
    assert drift < 1.0
    assert abs((make_clock()() - datetime.now(UTC)).total_seconds()) < 1.0


# --- tick() against a real server ----------------------------------------------------------------------------


class Row(BaseModel):
    id: int


def pipeline(name: str, cron: Cron | None, *, keeps_cursor: bool = False) -> Pipeline:
    """A scheduled pipeline; its extractor reads by interval (no cursor) unless `keeps_cursor`."""
    source = FileExtractor("/nonexistent/*.jsonl", skip_loaded=keeps_cursor)
    return Pipeline(name=name, extractors=[source], loader=ConsoleLoader(), schema=Row, schedule=cron)


@dataclass
class Harness:
    ctx: ServiceContext
    nc: Any

    async def runs_queued(self) -> int:
        """Messages ever stored on JETL_RUNS (its last sequence): one per distinct run id requested."""
        info = await self.nc.jetstream().stream_info(stream_name(Kind.RUN))
        return int(info.state.last_seq)


async def harness(url: str) -> Harness:
    settings = JetlSettings(nats=NatsSettings(url=url))
    ctx = make_context("scheduler", settings)
    await ctx.broker.connect()
    nc = await connect(settings.nats)
    await declare(nc, settings.nats)
    ctx.kv = await bucket(nc)
    return Harness(ctx, nc)


@pytest.fixture
async def h(nats: NatsHandle) -> AsyncIterator[Harness]:
    hh = await harness(nats.url)
    yield hh
    await hh.ctx.broker.stop()
    await hh.nc.close()


@pytest.mark.integration
async def test_first_sight_marks_the_current_slot_then_each_ended_slot_is_requested_once(h: Harness) -> None:
    register([pipeline("hourly", Cron("0 * * * *", catch_up="all"))])
    assert await tick(h.ctx, at(30)) == []  # first sight: no implicit backfill
    assert await read_marker(h.ctx, "hourly") == at(0)
    assert await tick(h.ctx, at(59)) == []
    assert await tick(h.ctx, at(60)) == [run_id_for("hourly", at(0))]
    assert await tick(h.ctx, at(61)) == []  # the marker moved: the same slot is not asked again
    assert await read_marker(h.ctx, "hourly") == at(60)
    assert await h.runs_queued() == 1


@pytest.mark.integration
async def test_a_cron_with_seconds_requests_a_run_per_slot_inside_a_minute(h: Harness) -> None:
    register([pipeline("often", Cron("* * * * * */10", catch_up="all", max_active_runs=5))])
    sec = timedelta(seconds=1)
    assert await tick(h.ctx, T0 + 5 * sec) == []  # first sight
    assert await tick(h.ctx, T0 + 10 * sec) == [run_id_for("often", T0)]
    assert await tick(h.ctx, T0 + 25 * sec) == [run_id_for("often", T0 + 10 * sec)]
    assert await tick(h.ctx, T0 + 31 * sec) == [run_id_for("often", T0 + 20 * sec)]
    assert await h.runs_queued() == 3  # three run ids within one minute, none taken for another


@pytest.mark.integration
async def test_catch_up_all_after_downtime_and_latest_after_downtime(h: Harness) -> None:
    register(
        [
            pipeline("every_all", Cron("*/10 * * * *", catch_up="all", max_active_runs=10)),
            pipeline("every_latest", Cron("*/10 * * * *", catch_up="latest")),
        ]
    )
    await tick(h.ctx, at(1))
    got = await tick(h.ctx, at(41))  # the scheduler was down for four slots
    assert [r for r in got if r.startswith("every_all")] == [run_id_for("every_all", at(m)) for m in (0, 10, 20, 30)]
    assert [r for r in got if r.startswith("every_latest")] == [run_id_for("every_latest", at(30))]


@pytest.mark.integration
async def test_paused_by_kv_requests_nothing_and_resume_catches_up(h: Harness) -> None:
    register([pipeline("p", Cron("*/10 * * * *", catch_up="all", max_active_runs=5))])
    await tick(h.ctx, at(0))
    await set_paused(h.ctx.kv, "p", True)  # type: ignore[arg-type]
    assert await tick(h.ctx, at(25)) == []
    await set_paused(h.ctx.kv, "p", False)  # type: ignore[arg-type]
    assert await tick(h.ctx, at(25)) == [run_id_for("p", at(0)), run_id_for("p", at(10))]


@pytest.mark.integration
async def test_paused_in_code_and_unscheduled_pipelines_are_never_requested(h: Harness) -> None:
    register([pipeline("off", Cron("* * * * *", paused=True)), pipeline("manual_only", None)])
    await tick(h.ctx, at(0))
    assert await tick(h.ctx, at(5)) == []
    assert await h.runs_queued() == 0


@pytest.mark.integration
async def test_max_active_runs_defers_slots_until_runs_finish(h: Harness) -> None:
    from jetl.events import RunCompleted
    from jetl.state import apply, mark_finished

    register([pipeline("one_at_a_time", Cron("*/10 * * * *", catch_up="all", max_active_runs=1))])
    await tick(h.ctx, at(0))
    first = await tick(h.ctx, at(35))
    assert first == [run_id_for("one_at_a_time", at(0))]  # one active at most; the others wait, not dropped
    assert list(await active_runs(h.ctx.kv, "one_at_a_time")) == first  # type: ignore[arg-type]
    assert await tick(h.ctx, at(36)) == []
    state = await apply(
        h.ctx.kv,
        RunCompleted(
            pipeline="one_at_a_time",
            run_id=first[0],
            extracted=0,  # type: ignore[arg-type]
            loaded=0,
            rejected=0,
            filtered=0,
        ),
    )
    await mark_finished(h.ctx.kv, state)  # type: ignore[arg-type]
    assert await tick(h.ctx, at(37)) == [run_id_for("one_at_a_time", at(10))]


@pytest.mark.integration
async def test_a_pipeline_that_keeps_a_cursor_runs_one_slot_at_a_time(h: Harness) -> None:
    """Runs that start from the last completed run's cursor must not overlap, whatever max_active_runs says."""
    register([pipeline("files", Cron("*/10 * * * *", catch_up="all", max_active_runs=5), keeps_cursor=True)])
    await tick(h.ctx, at(0))
    assert await tick(h.ctx, at(25)) == [run_id_for("files", at(0))]
    assert await tick(h.ctx, at(26)) == []  # the next slot waits for it


@pytest.mark.integration
async def test_two_schedulers_ticking_the_same_slot_queue_one_run(h: Harness, nats: NatsHandle) -> None:
    other = await harness(nats.url)
    try:
        register([pipeline("shared", Cron("* * * * *", catch_up="all", max_active_runs=100))])
        await tick(h.ctx, at(0))
        a, b = await asyncio.gather(tick(h.ctx, at(3)), tick(other.ctx, at(3)))
        assert a == b == [run_id_for("shared", at(m)) for m in (0, 1, 2)]  # both asked for every slot...
        assert await h.runs_queued() == 3  # ...and JetStream kept one request per slot
    finally:
        await other.ctx.broker.stop()
        await other.nc.close()


@pytest.mark.integration
async def test_one_pipeline_failing_does_not_stop_the_others(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    register([pipeline("bad", Cron("* * * * *")), pipeline("good", Cron("* * * * *"))])
    await tick(h.ctx, at(0))
    real = h.ctx.bus.request

    async def flaky(req: Any, **kw: Any) -> bool:
        if req.pipeline == "bad":
            raise ConnectionError("publish refused")
        return await real(req, **kw)

    monkeypatch.setattr(h.ctx.bus, "request", flaky)
    assert await tick(h.ctx, at(1)) == [run_id_for("good", at(0))]
    assert await read_marker(h.ctx, "bad") == at(0)  # not advanced: retried on the next tick
    monkeypatch.setattr(h.ctx.bus, "request", real)
    assert await tick(h.ctx, at(1.5)) == [run_id_for("bad", at(0))]


@pytest.mark.integration
async def test_marker_never_moves_backwards(h: Harness) -> None:
    from jetl_scheduler.cron import _advance

    register([pipeline("m", Cron("* * * * *"))])
    await _advance(h.ctx, "m", at(10))
    await _advance(h.ctx, "m", at(5))  # a replica with a late clock
    assert await read_marker(h.ctx, "m") == at(10)
