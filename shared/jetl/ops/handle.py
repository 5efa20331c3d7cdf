"""What an operator function needs of the one handle it is given (`jetl.ops.client.JetlClient`): the settings, the
NATS connection, the state bucket, the bus and a run's state folded from the log. The read models below the client
take this protocol, so the client can use them without an import cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from jetl.bus import Bus
    from jetl.runstate import RunState
    from jetl.settings import JetlSettings


class Handle(Protocol):
    """A connected JetlClient, as the operator functions use it."""

    settings: JetlSettings

    @property
    def conn(self) -> Client:
        """The nats-py connection."""
        ...

    async def kv(self) -> KeyValue:
        """The state bucket."""
        ...

    async def bus(self) -> Bus:
        """The bus for publishing (connected on first use)."""
        ...

    async def run_state(self, pipeline: str, run_id: str) -> RunState | None:
        """The folded state of one run, from the log itself."""
        ...
