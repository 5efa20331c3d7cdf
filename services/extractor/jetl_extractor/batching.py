"""Cutting extractor output into batches: at most `batch_size` records each, and, when their bytes would pass the
connection's max_payload, cut again by bytes; a record too large for any message is set aside for a dead letter
(kept by reference). The batches go out in order, so their ids stay deterministic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from jetl.messages.payload import PAYLOAD_HEADROOM, fit_payload, item_size
from jetl.messages.wire import compact_origins, encode_records
from jetl.protocols import Chunk

Send = Callable[
    [
        bytes,
        list[str] | None,
        list[tuple[str, int, int]] | None,
        list[tuple[str, str]],
        int,
        list[tuple[str, Any, int]],
        int | None,
    ],
    Awaitable[None],
]
"""Publish one batch: (encoded records, their origins a string each, or as runs of `file:line`, the unreadable
inputs, the record count, the oversized records that go with it, the version of its first record when the extractor
gave one: `Chunk.version`)."""


class Batcher:
    """Re-chunks extractor output into pipeline-sized batches and hands each to `send`; `check` raises a publish
    that already failed, before another batch is cut."""

    def __init__(self, batch_size: int, max_payload: Callable[[], int], send: Send, check: Callable[[], None]) -> None:
        self.batch_size = batch_size
        self.max_payload = max_payload
        self.send = send
        self.check = check
        self.buf: list[Any] = []
        """Records, or their JSON texts (`Chunk.raw`), not yet published."""
        self.origins: list[str] = []
        """The origin of each in `buf`, unless `whole` holds them."""
        self.bad: list[tuple[str, str]] = []
        self.whole: Chunk | None = None
        """A chunk `buf` holds alone, as it came: published as one batch with its own origins (the file extractor
        numbers its lines as runs, not as a string each) unless another chunk joins it first."""
        self.versions: list[list[Any]] = []
        """[records, version of the first] of each chunk `buf` holds records of, in order (`Chunk.version`)."""

    async def add(self, chunk: Chunk) -> None:
        """Take a chunk in; send every full batch it completes."""
        size = self.batch_size
        if self.whole is not None:  # another chunk joins the one held whole: it needs its origins one by one
            self.origins, self.whole = self.whole.origin_list(), None
        if not self.buf and chunk.count <= size:
            self.whole, self.buf = chunk, list(chunk.items)
        else:
            self.buf.extend(chunk.items)
            self.origins.extend(chunk.origin_list())
        self.bad.extend(chunk.rejected)
        self.versions.append([chunk.count, chunk.version])
        while len(self.buf) >= size:
            await self.flush(final=False)

    async def flush(self, *, final: bool) -> None:
        """Send one batch of what is held (`final`: all of it, as batches)."""
        size = self.batch_size
        if not self.buf and not self.bad:
            return
        self.check()
        take = len(self.buf) if final else size
        whole, self.whole = self.whole, None
        items, self.buf = self.buf[:take], self.buf[take:]
        if whole is not None:  # `add` holds a chunk whole only when it fits one batch: it is all of `items`
            origins, runs = whole.origins, whole.origin_runs
        else:
            origins, self.origins = self.origins[:take], self.origins[take:]
            runs = None
        bad, self.bad = self.bad, []
        version = self._take_versions(take)
        body = encode_records(items)
        if len(body) <= self._budget(origins if runs is None else None):
            del items  # encoded: the records (or texts) need not wait in memory for the publish (~30 MB a batch)
            await self.send(body, origins, runs, bad, take, [], version)
        else:  # more bytes than one message carries: cut it by bytes, and set aside records too large for any
            every = whole.origin_list() if whole is not None else (origins or [])
            await self._split(items, every, bad, version)
        if final and self.buf:
            await self.flush(final=True)

    def _take_versions(self, take: int) -> int | None:
        """The version of the first of the next `take` records held (None: their chunk gave none), and forget theirs.

        A batch cut across chunks numbers its records on from its first one's version: still in order and below the
        next batch's first, since each chunk is consecutive and starts above the previous one's last."""
        first: int | None = None
        while self.versions and self.versions[0][0] == 0:
            self.versions.pop(0)  # a chunk of nothing but unreadable input
        if self.versions:
            first = self.versions[0][1]
        while take > 0 and self.versions:
            head = self.versions[0]
            used = min(take, head[0])
            take -= used
            head[0] -= used
            if head[1] is not None:
                head[1] += used
            if head[0] == 0:
                self.versions.pop(0)
        return first

    def _budget(self, origins: list[str] | None) -> int:
        """Bytes of records a raw batch may carry: the connection's max_payload, less the envelope's origins as they
        travel (runs of `file:line` when they compress, else a string each: `encode_batch`)."""
        listed = sum(len(o) + 3 for o in origins) if origins else 0
        if origins and listed > PAYLOAD_HEADROOM and (runs := compact_origins(origins)) is not None:
            listed = sum(len(prefix) + 32 for prefix, _, _ in runs)  # ~0.15 us an origin, only for long lists
        return self.max_payload() - PAYLOAD_HEADROOM - listed

    async def _split(
        self, items: list[Any], origins: list[str], bad: list[tuple[str, str]], version: int | None = None
    ) -> None:
        """Publish `items` as as many batches as their bytes need (each under max_payload, in order, so the ids stay
        deterministic); a record too large for any message becomes a dead letter whose body is kept by reference."""
        sizes = [item_size(x) for x in items]
        listed = max((len(o) + 3 for o in origins), default=0) * len(items)  # an upper bound for any run of them
        cuts, oversized = fit_payload(sizes, self.max_payload() - PAYLOAD_HEADROOM - listed)
        big = [(origins[i] if i < len(origins) else "", items[i], sizes[i]) for i in oversized]
        for n, (start, stop) in enumerate(cuts):
            part = items[start:stop]
            # the oversized records and the unreadable ones go with the first batch of the cut (one letter each)
            first = n == 0
            await self.send(
                encode_records(part),
                origins[start:stop],
                None,
                bad if first else [],
                len(part),
                big if first else [],
                None if version is None else version + start,
            )
        if not cuts:  # every record was too large: an empty batch carries their letter and the run's count
            await self.send(encode_records([]), [], None, bad, 0, big, None)
