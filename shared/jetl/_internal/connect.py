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


async def riding_connection(s: JetlSettings) -> Any:
    """A nats-py connection for a command that follows the log (`jetl run`, `logs --follow`): it fails fast when NATS
    cannot be reached at all, and once connected it reconnects for up to two minutes (a NATS restart mid-run).

    Readers notice a reconnect by `nc.stats["reconnects"]` and resume from the last sequence they saw
    (`jetl.eventlog.tail`).
    """
    probe = await nats_connection(s)  # one attempt, one clear error: a server that is down is not waited for
    await probe.close()

    async def quiet(exc: Exception) -> None:  # a restart would print a traceback per reconnect attempt
        return None

    # 240 attempts 0.5 s apart: NATS may be away two minutes (a restart takes seconds); not for ever, so a
    # reconnect loop that outlives its connection (see JetlClient.__aexit__) ends on its own
    return await connect(s.nats, max_reconnect_attempts=240, reconnect_time_wait=0.5, error_cb=quiet)
