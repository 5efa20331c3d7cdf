"""Waiting in tests on a condition the system reaches, never on a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 120.0, every: float = 0.2) -> Any:
    """`probe()`'s first truthy answer, asked every `every` seconds; AssertionError naming `what` (and the last
    answer) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")
