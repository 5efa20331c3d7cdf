"""Scheduler service settings."""

from __future__ import annotations

from pydantic import SecretStr

from jetl.settings import JetlSettings


class SchedulerSettings(JetlSettings):
    """Settings of the scheduler service (env `JETL_...`)."""

    tick_seconds: float = 5.0
    """How often due cron slots are checked."""
    cron_enabled: bool = True
    """Turn cron scheduling off (the tracker still folds events)."""
    fetch_batch: int = 256
    """Events pulled per fetch by the run tracker (from each shard it holds), folded together: one state write per
    run per fetch, so the tracker keeps up with every stage at once. A pull takes what is there at once; only when
    the shard is idle does it wait (up to `fetch_timeout`) for its next event."""
    fetch_timeout: float = 0.05
    """Seconds an idle watchdog pull waits to fill a fetch after its first advisory."""
    idle_wait: float = 1.0
    """Seconds an idle tracker shard's pull waits for an event before asking again (an event that comes meanwhile
    is handed over at once: this adds nothing to run.completed)."""
    shard_lease_seconds: float = 15.0
    """A tracker shard's lease (`jetl_scheduler.shards`): renewed every third of it by its holder; a replica that
    stops renewing (killed, cut off) has its shards taken by the others after this long."""
    catch_up_grace_seconds: float = 300.0
    """With `catch_up="none"`, a slot that ended longer ago than this is skipped, not run late."""
    max_slots_per_tick: int = 100
    """Most slots one tick requests per pipeline (a long `catch_up="all"` backlog drains over several ticks)."""
    clock_epoch: float = 0.0
    """Test clock: the Unix time at which the scheduler's clock starts to run `clock_speed` times faster."""
    clock_speed: float = 1.0
    """Test clock: how many scheduler seconds pass per real second after `clock_epoch` (1: the real clock)."""
    alert_webhook_url: SecretStr | None = None
    """POST a JSON alert here when a run fails or a pipeline goes stale (Slack-style `text` included)."""
    alert_retries: int = 3
    """Attempts per alert (network errors and 5xx/429 are retried with backoff)."""
    alert_timeout_seconds: float = 5.0
    """Timeout of one alert POST."""
    stale_factor: float = 2.0
    """A scheduled pipeline is stale when its last success is older than this many schedule periods."""
    stale_check_seconds: float = 30.0
    """How often pipelines are checked for staleness (only when a webhook is configured)."""
    stall_seconds: float = 900.0
    """A started run with no event for this long fails as stalled (with run.failed, and an alert)."""
    stall_check_seconds: float = 30.0
    """How often unfinished runs are checked for a stall."""
