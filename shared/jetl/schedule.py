"""Schedules are data: a cron expression with a time zone and a catch-up policy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from jetl.errors import ConfigError

CatchUp = Literal["none", "latest", "all"]


@dataclass(frozen=True)
class Cron:
    """A cron schedule: `Cron("0 * * * *", tz="Europe/Berlin", catch_up="latest")`. A sixth field gives seconds:
    `Cron("* * * * * */10")` has a slot every 10 seconds (the scheduler looks every `tick_seconds`)."""

    expression: str
    tz: str = "UTC"
    catch_up: CatchUp = "latest"
    max_active_runs: int = 1
    """Unfinished runs at once (more slots wait); 1 whatever it says for a pipeline that keeps a cursor."""
    paused: bool = False

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.expression):
            raise ConfigError(f"invalid cron expression {self.expression!r}")
        try:
            ZoneInfo(self.tz)
        except Exception as exc:
            raise ConfigError(f"unknown time zone {self.tz!r}") from exc
        if self.max_active_runs < 1:
            raise ConfigError("max_active_runs must be at least 1")

    @property
    def has_seconds(self) -> bool:
        """The expression has a sixth field, of seconds: slots may start inside a minute."""
        return not self.expression.startswith("@") and len(self.expression.split()) == 6

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.tz)

    @property
    def _fixed_hours(self) -> bool:
        """True unless the hour field is a wildcard (`*`, `*/2`): decides what a repeated DST hour does."""
        fields = self.expression.split()
        if self.expression.startswith("@"):
            return self.expression.strip() != "@hourly"
        return len(fields) > 1 and not fields[1].startswith("*")

    def _repeated(self, slot: datetime) -> bool:
        """`slot` is the second pass of a wall-clock time (the hour a DST fall-back repeats) on a fixed-hour cron.

        Like Vixie cron, a job at a fixed hour (`30 2 * * *`) runs once when 02:30 happens twice; a job with a
        wildcard hour runs in both passes, because each is a real hour of data.
        """
        if not self._fixed_hours:
            return False
        zone, utc = self.zone, slot.astimezone(UTC)  # arithmetic in UTC: aware local times subtract as wall time
        local = utc.astimezone(zone).replace(tzinfo=None)
        for back in (timedelta(minutes=30), timedelta(hours=1), timedelta(hours=2)):
            if (utc - back).astimezone(zone).replace(tzinfo=None) == local:
                return True
        return False

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment`."""
        it = croniter(self.expression, moment.astimezone(self.zone))
        nxt: datetime = it.get_next(datetime)
        while self._repeated(nxt):
            nxt = it.get_next(datetime)
        return nxt.astimezone(UTC)

    def prev_at_or_before(self, moment: datetime) -> datetime:
        """The latest slot at or before `moment`."""
        local = moment.astimezone(self.zone)
        it = croniter(self.expression, local)
        if croniter.match(self.expression, local):
            slot = local.astimezone(UTC).replace(microsecond=0)
            if not self.has_seconds:
                slot = slot.replace(second=0)
            if not self._repeated(slot):
                return slot
        prev: datetime = it.get_prev(datetime)
        while self._repeated(prev):
            prev = it.get_prev(datetime)
        return prev.astimezone(UTC)

    def period(self, moment: datetime) -> timedelta:
        """The length of the slot that `moment` falls in (an hour for `0 * * * *`, 23 h on a DST day)."""
        start = self.prev_at_or_before(moment)
        return self.next_after(start) - start

    def is_stale(self, last_success: datetime, now: datetime, factor: float = 2.0) -> bool:
        """No success for more than `factor` slot lengths: the data is older than its schedule promises."""
        return now - last_success > self.period(now) * factor

    def intervals(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The data intervals [slot, next slot) that start in [start, end)."""
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        slot = self.prev_at_or_before(start)
        if slot < start:
            slot = self.next_after(slot)
        while slot < end:
            nxt = self.next_after(slot)
            yield slot, nxt
            slot = nxt


def run_id_for(pipeline: str, interval_start: datetime, prefix: str = "") -> str:
    """Deterministic run id for a scheduled slot, e.g. `daily_sales-20261125T0000Z` (with its seconds when a slot
    starts inside a minute: `cdc-20261125T000010Z`)."""
    start = interval_start.astimezone(UTC)
    stamp = start.strftime("%Y%m%dT%H%M%SZ" if start.second else "%Y%m%dT%H%MZ")
    return f"{prefix}{pipeline}-{stamp}"


@dataclass(frozen=True)
class Slot:
    """One data interval [start, end) of a schedule, and the run id that loads it."""

    run_id: str
    start: datetime
    end: datetime


def backfill_slots(pipeline: str, cron: Cron, start: datetime, end: datetime) -> list[Slot]:
    """The schedule's intervals that start in [start, end), each under the run id the scheduler gives that slot,
    so a backfill and the schedule (or two backfills) never load an interval twice."""
    return [Slot(run_id_for(pipeline, s), s, e) for s, e in cron.intervals(start, end)]
