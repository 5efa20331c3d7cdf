"""A NATS connection for one-shot operations (CLI commands, dashboard queries): it fails fast instead of retrying."""

from __future__ import annotations

from typing import Any

from jetl.bus import connect
from jetl.errors import TransientError
from jetl.settings import JetlSettings


async def nats_connection(s: JetlSettings) -> Any:
    """A nats-py connection that fails fast (no reconnect loop) with one clear error."""

    async def quiet(exc: Exception) -> None:  # nats-py prints a traceback per failed attempt otherwise
        return None

    try:
        # max_reconnect_attempts=0 would make nats-py retry forever; 1 fails fast
        return await connect(
            s.nats, allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=quiet
        )
    except Exception as exc:
        raise TransientError(f"cannot reach NATS at {s.nats.url}: {type(exc).__name__} {exc}") from exc
