"""Questions about a pipeline's destination, asked of the loader over request/reply (the loader is the only process
that may open it): row counts, the last position, a shadow's diff."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from jetl import subjects
from jetl.errors import TerminalError, TransientError

if TYPE_CHECKING:
    from jetl.ops.handle import Handle


async def ask_loader(jc: Handle, verb: str, body: dict[str, Any], timeout: float = 60.0) -> Any:
    """Request/reply to the loader service; its error comes back as a TransientError or TerminalError."""
    try:
        msg = await jc.conn.request(subjects.control("loader", verb), orjson.dumps(body), timeout=timeout)
    except NoRespondersError as exc:
        raise TransientError("no loader answered: is the loader service running? (`jetl up`)") from exc
    except (NatsTimeout, TimeoutError) as exc:
        raise TransientError(f"the loader did not answer {verb!r} within {timeout:.0f}s") from exc
    reply = orjson.loads(msg.data)
    if reply.get("ok"):
        return reply["result"]
    error = TransientError if reply.get("disposition") == "transient" else TerminalError
    raise error(f"loader could not {verb}: {reply.get('error')}")


@dataclass
class DestinationCount:
    """Rows in a pipeline's destination, as its loader counted them."""

    pipeline: str
    destination: str
    total: int | None
    """None: the loader cannot count (the console)."""
    by_run: dict[str, int] | None = None
    """Rows per run id, where the loader keeps lineage."""
    exact: bool = True
    """False for tables that merge rows by key (a key's older rows vanish as parts merge)."""
    key: list[str] = field(default_factory=list)
    """The pipeline's primary key (empty: append mode)."""
    keys: int | None = None
    """Distinct primary keys in the destination (None without a key)."""
    current: int | None = None
    """The rows the destination means now: one per key (the highest version), deletes applied, a replace's newest
    complete run, superseded attempts left out (None: the loader cannot tell)."""


@dataclass
class QueryResult:
    """What a query of a pipeline's destination answered (`jetl query`)."""

    destination: str
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    """More rows matched than were returned."""
