"""In-memory stage tests: capture what a handler publishes, on FastStream's TestNatsBroker (no server)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faststream.nats import JStream, NatsBroker
from faststream.nats.annotations import NatsMessage

from jetl import subjects
from jetl.bus import raw_decoder
from jetl.subjects import Kind


def capture(broker: NatsBroker, kinds: Iterable[Kind]) -> dict[Kind, list[bytes]]:
    """Subscribe sinks on `broker` for each kind's stream; returns the lists they fill with raw bodies.

    Call before entering `TestNatsBroker(broker)`.
    """
    captured: dict[Kind, list[bytes]] = {}

    def make_sink(kind: Kind) -> Any:
        def sink(body: Any, message: NatsMessage) -> None:
            captured[kind].append(message.body)

        return sink

    for kind in kinds:
        captured[kind] = []
        broker.subscriber(
            subjects.pattern(kind),
            stream=JStream(subjects.stream_name(kind), declare=False),
            decoder=raw_decoder,
        )(make_sink(kind))
    return captured
