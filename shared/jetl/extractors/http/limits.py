"""`Limits`: how far one run may go: pages, redirects, bytes, request rate, and how long a request may take."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jetl.errors import ConfigError
from jetl.extractors.http.retry import _count, _seconds


@dataclass(frozen=True)
class Limits:
    """The bounds of a run, each refused with an error naming it (see `jetl.extractors.http`).

    `max_pages` is a cap you choose: the run stops there quietly. `page_limit` is a guard: a run past it fails.
    A body is refused past `max_response_bytes`, counted after decoding. `request_deadline` bounds one request
    whole (connecting, redirects, the full body), however slowly the server trickles it: httpx's `timeout` only
    bounds each read. `page_deadline` bounds one page with its retries and their waits. Past either, the run is
    handed back to the bus (a TransientError), so a slow API does not hold an extractor.

    Example:
        HttpExtractor(url, limits=Limits(max_pages=1000, requests_per_second=10, request_deadline=60))
    """

    max_pages: int | None = None
    page_limit: int = 100_000
    max_redirects: int = 10
    max_response_bytes: int = 64 * 1024 * 1024
    requests_per_second: float | None = None
    request_deadline: float = 120.0
    page_deadline: float = 600.0

    def __post_init__(self) -> None:
        _count("Limits", "max_pages", 1 if self.max_pages is None else self.max_pages, 1)
        _count("Limits", "page_limit", self.page_limit, 1)
        _count("Limits", "max_redirects", self.max_redirects, 0)
        _count("Limits", "max_response_bytes", self.max_response_bytes, 1)
        rate = self.requests_per_second
        if rate is not None and not (
            isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate < math.inf
        ):
            raise ConfigError(f"Limits: requests_per_second must be > 0, not {rate!r}")
        _seconds("Limits", "request_deadline", self.request_deadline, positive=True)
        _seconds("Limits", "page_deadline", self.page_deadline, positive=True)
