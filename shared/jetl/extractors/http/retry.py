"""Retries and pacing: which failures are retried, how long to wait (backoff, Retry-After), request spacing."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from datetime import UTC, datetime

import httpx


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
