"""In-memory stage tests: capture what a handler publishes, on FastStream's TestNatsBroker (no server), and a KV
bucket in memory for what folds run state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from faststream.nats import JStream, NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

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


@dataclass
class _Entry:
    """One key's value and revision."""

    value: bytes
    revision: int


@dataclass
class MemoryKV:
    """A KV bucket in memory with compare-and-set, counting what each key prefix was written (bytes, times)."""

    data: dict[str, _Entry] = field(default_factory=dict)
    revision: int = 0
    writes: dict[str, list[int]] = field(default_factory=dict)
    ttls: dict[str, float | None] = field(default_factory=dict)
    fail_batch_writes: int = 0
    """Raise on this many batch-key writes (a delivery stopping between its writes)."""

    async def get(self, key: str) -> _Entry:
        if key not in self.data:
            raise KeyNotFoundError
        return self.data[key]

    def _store(self, key: str, value: bytes, msg_ttl: float | None) -> int:
        if key.startswith("batch.") and self.fail_batch_writes:
            self.fail_batch_writes -= 1
            raise ConnectionError("the tracker died here")
        self.revision += 1
        self.data[key] = _Entry(value, self.revision)
        self.writes.setdefault(key.split(".", 1)[0], []).append(len(value))
        self.ttls[key] = msg_ttl
        return self.revision

    async def create(self, key: str, value: bytes, msg_ttl: float | None = None) -> int:
        if key in self.data:
            raise KeyWrongLastSequenceError
        return self._store(key, value, msg_ttl)

    async def update(self, key: str, value: bytes, last: int | None = None, msg_ttl: float | None = None) -> int:
        if key not in self.data or self.data[key].revision != last:
            raise KeyWrongLastSequenceError
        return self._store(key, value, msg_ttl)

    async def put(self, key: str, value: bytes) -> int:
        return self._store(key, value, None)

    async def purge(self, key: str, msg_ttl: float | None = None) -> bool:
        self.data.pop(key, None)
        return True

    # what `jetl.state.bucket_keys` reads of a real bucket: its stream's subjects under a filter
    _stream = "KV_MEMORY"
    _pre = "$KV.MEMORY."

    @property
    def _js(self) -> Any:
        return self

    async def stream_info(self, stream: str, subjects_filter: str = ">") -> Any:
        from types import SimpleNamespace

        want = subjects_filter.removeprefix(self._pre).split(".")

        def matches(key: str) -> bool:
            parts = key.split(".")
            for i, w in enumerate(want):
                if w == ">":
                    return len(parts) > i
                if i >= len(parts) or (w != "*" and w != parts[i]):
                    return False
            return len(parts) == len(want)

        found = {self._pre + k: 1 for k in self.data if matches(k)}
        return SimpleNamespace(state=SimpleNamespace(subjects=found))
