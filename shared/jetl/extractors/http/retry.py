"""Retries and pacing: `Retry` (how often and how long to wait), which failures are retried, backoff and
Retry-After, request spacing."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from jetl.errors import ConfigError


def _count(owner: str, name: str, number: object, low: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or number < low:
        raise ConfigError(f"{owner}: {name} must be an integer of at least {low}, not {number!r}")


def _seconds(owner: str, name: str, seconds: object, *, positive: bool = False) -> None:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
        or (positive and seconds == 0)
    ):
        raise ConfigError(
            f"{owner}: {name} must be a number of seconds {'> 0' if positive else '>= 0'}, not {seconds!r}"
        )


@dataclass(frozen=True)
class Retry:
    """How a failed request is retried: network errors, timeouts, HTTP 408, 429 and 5xx are retried up to
    `max_retries` times, after an exponential backoff with jitter (`backoff` doubling up to `max_backoff`), never
    sooner than the server's `Retry-After`. A `Retry-After` longer than `max_retry_after` hands the run back to the
    bus at once (a TransientError): the bus waits, not the extractor.

    Example:
        HttpExtractor(url, retry=Retry(max_retries=3, backoff=1.0))
    """

    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        _count("Retry", "max_retries", self.max_retries, 0)
        for name in ("backoff", "max_backoff", "max_retry_after"):
            _seconds("Retry", name, getattr(self, name))


class _Pacer:
    """Spaces request starts at least `1 / per_second` apart, across every run this extractor serves."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next_at = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self.next_at)
        self.next_at = slot + self.interval  # reserve the slot before sleeping, so concurrent runs queue up
        if slot > now:
            await asyncio.sleep(slot - now)


_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)


def _retryable(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _delay(attempt: int, backoff: float, max_backoff: float, retry_after: float | None) -> float:
    """Exponential backoff with jitter (half fixed, half random), never shorter than the server asked."""
    ceiling = min(max_backoff, backoff * 2**attempt)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return float(max(delay, retry_after or 0.0))
