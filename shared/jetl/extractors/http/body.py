"""Reading a response body within `Limits.max_response_bytes`, counted after decoding.

httpx decodes a compressed body a network chunk at a time, but one chunk decodes whole: 32 KB of zstd became 2.3 GB
in one call. Here the raw bytes are decoded by jetl, each decoder writing its output in pieces of at most `_PIECE`
bytes to a sink that counts them, so a body is refused at most one piece past the limit, however far it would
expand. Only the encodings decoded here are advertised (`ACCEPT_ENCODING`); a body in any other is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import httpx
import zstandard

from jetl.errors import TerminalError

_PIECE = 64 * 1024
"""The most one decoding step writes before its output is counted."""
ACCEPT_ENCODING = "gzip, deflate, zstd"
"""What the extractor tells servers it can read: the encodings `read_body` decodes within the limit."""


class _TooLarge(Exception):
    """The decoded body went past the limit."""


class _Sink:
    """Counts the bytes written to it, and keeps them when `keep`; past `limit`, `_TooLarge`."""

    def __init__(self, limit: int, keep: bool = True) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []
        self.keep = keep

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _TooLarge
        if self.keep:
            self.parts.append(data)


Feed = Callable[[bytes], None]
"""A decoding step: takes the next encoded bytes and writes their decoding onward, `_PIECE` bytes at a time."""


class _Zlib:
    """gzip (several members too), or deflate: zlib-wrapped, or raw as some servers send it."""

    def __init__(self, wbits: int, out: Feed) -> None:
        self.wbits, self.out = wbits, out
        self.d = zlib.decompressobj(wbits)
        self.first = True

    def __call__(self, data: bytes) -> None:
        while data:
            try:
                piece = self.d.decompress(data, _PIECE)
            except zlib.error:
                if not (self.first and self.wbits == zlib.MAX_WBITS):
                    raise
                self.d, self.first = zlib.decompressobj(-zlib.MAX_WBITS), False  # deflate without its header
                continue
            self.first = False
            self.out(piece)
            if self.d.unconsumed_tail:
                data = self.d.unconsumed_tail
            elif self.d.eof and self.d.unused_data:  # the next gzip member
                data, self.d = self.d.unused_data, zlib.decompressobj(self.wbits)
            else:
                data = b""


class _Zstd:
    """zstd, several frames too: the decompressor writes its output to `write` in pieces of `_PIECE` bytes."""

    def __init__(self, out: Feed) -> None:
        self.out = out
        onward: Any = self  # a writer: `write` is all the decompressor calls
        self.writer = zstandard.ZstdDecompressor().stream_writer(onward, write_size=_PIECE, closefd=False)

    def write(self, data: bytes) -> int:
        self.out(bytes(data))
        return len(data)

    def __call__(self, data: bytes) -> None:
        self.writer.write(data)


def _decoders(encoding: str, sink: _Sink, where: str) -> Feed:
    """The steps that undo `Content-Encoding` (applied in the order listed, so undone from the last); each
    step's output is counted against the limit, not only the last one's."""
    feed: Feed = sink.write
    for name in [part.strip().lower() for part in encoding.split(",")]:
        if name in ("identity", ""):
            continue
        step = _Sink(sink.limit, keep=False)

        def counted(data: bytes, onward: Feed = feed, step: _Sink = step) -> None:
            step.write(data)
            onward(data)

        if name in ("gzip", "x-gzip"):
            feed = _Zlib(zlib.MAX_WBITS | 16, counted)
        elif name == "deflate":
            feed = _Zlib(zlib.MAX_WBITS, counted)
        elif name == "zstd":
            feed = _Zstd(counted)
        else:
            raise TerminalError(f"{where}: the response is encoded as {encoding!r}; jetl reads {ACCEPT_ENCODING}")
    return feed


async def read_body(response: httpx.Response, max_bytes: int, where: str, pipeline: str) -> bytes:
    """The decoded body, refused past `max_bytes` decoded (or raw) bytes as soon as it gets there: a huge or
    highly compressed answer is never held whole."""
    size = response.headers.get("Content-Length", "")
    if size.isdigit() and int(size) > max_bytes:
        raise TerminalError(
            f"pipeline {pipeline!r}: {where}: the response is {int(size)} bytes, more than "
            f"max_response_bytes={max_bytes}"
        )
    sink = _Sink(max_bytes)
    raw = _Sink(max_bytes, keep=False)
    try:
        held: bytes | None = response.content  # read already: a response built in memory (httpx.MockTransport)
    except httpx.ResponseNotRead:
        held = None
    try:
        if held is not None:
            sink.write(held)
            return held
        feed = _decoders(response.headers.get("Content-Encoding", ""), sink, where)
        async for part in response.aiter_raw():
            raw.write(part)
            feed(part)
    except _TooLarge:
        raise TerminalError(
            f"pipeline {pipeline!r}: {where}: the response is larger than max_response_bytes={max_bytes} "
            "(counted as decoded)"
        ) from None
    except (zlib.error, zstandard.ZstdError) as exc:
        encoding = response.headers.get("Content-Encoding")
        raise TerminalError(f"{where}: the response's {encoding} body does not decode: {exc}") from None
    return b"".join(sink.parts)
