"""Scheduler service settings."""

from __future__ import annotations

from jetl.settings import JetlSettings


class SchedulerSettings(JetlSettings):
    """Settings of the scheduler service (env `JETL_...`)."""

    tick_seconds: float = 5.0
    """How often due cron slots are checked."""
    cron_enabled: bool = True
    """Turn cron scheduling off (the tracker still folds events)."""
    fetch_batch: int = 64
    """Events pulled per fetch by the run tracker."""
    fetch_timeout: float = 0.2
    """Seconds a tracker pull waits to fill a fetch."""
    watch_pipelines: bool = True
    """Reload pipeline modules that change on disk without a restart."""
