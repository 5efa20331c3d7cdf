"""HttpExtractor against hostile servers: compression bombs, servers that trickle, APIs that echo credentials.

A bomb is refused as it decodes, never held whole; a trickling server is cut at the request's deadline however
short each wait between its bytes; a secret the extractor was given never reaches an error, a log line or an event
even when the API quotes it back.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import zstandard
from pydantic import SecretStr

from jetl.errors import TerminalError, TransientError
from jetl.extractors.http import (
    ApiKeyAuth,
    Auth,
    BasicAuth,
    BearerAuth,
    HttpExtractor,
    Limits,
    NextUrlPagination,
    Retry,
)
from jetl.logging import redact_secrets
from jetl.protocols import ExtractContext
from jetl.redact import MASK

LIMIT = 1 << 20
BOMB = 64 << 20  # decoded size: 64 times the limit, from a few KB on the wire


class Trickle(httpx.AsyncByteStream):
    """A body handed over in pieces, as a network would: nothing is decoded before the extractor reads it."""

    def __init__(self, data: bytes, piece: int = 16 * 1024) -> None:
        self.data, self.piece = data, piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self.data), self.piece):
            yield self.data[at : at + self.piece]


def gzip_bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(BOMB >> 20)) + packer.flush()


def zstd_bomb() -> bytes:
    packer = zstandard.ZstdCompressor(level=19).compressobj()
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(BOMB >> 20)) + packer.flush()


async def run(extractor: HttpExtractor) -> list[Any]:
    return [c async for c in extractor.extract(ExtractContext(pipeline="api", run_id="r1"))]


@pytest.mark.parametrize(("encoding", "bomb"), [("gzip", gzip_bomb), ("zstd", zstd_bomb)])
async def test_a_compression_bomb_is_refused_as_it_decodes(encoding: str, bomb: Callable[[], bytes]) -> None:
    body = bomb()
    assert len(body) < LIMIT // 4  # small on the wire: only the decoded size gives it away
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("Accept-Encoding", ""))
        return httpx.Response(200, headers={"Content-Encoding": encoding}, stream=Trickle(body))

    extractor = HttpExtractor(
        "http://api.test/bomb", limits=Limits(max_response_bytes=LIMIT), transport=httpx.MockTransport(handler)
    )
    tracemalloc.start()
    try:
        with pytest.raises(TerminalError) as info:
            await run(extractor)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "pipeline 'api': GET http://api.test/bomb (page 1)" in str(info.value)
    assert f"larger than max_response_bytes={LIMIT}" in str(info.value)
    assert peak < 4 * LIMIT  # the limit plus a piece or two, never the 64 MiB the body decodes to
    assert asked == ["gzip, deflate, zstd"]  # only what it can decode within the limit


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
        ("zstd", zstandard.ZstdCompressor().compress),
        ("gzip, zstd", lambda data: zstandard.ZstdCompressor().compress(gzip.compress(data))),
        ("identity", lambda data: data),
    ],
)
async def test_encoded_bodies_decode_to_their_records(encoding: str, pack: Callable[[bytes], bytes]) -> None:
    records = [{"id": i, "name": "x" * 50} for i in range(2000)]
    body = pack(json.dumps(records).encode())

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": encoding}, stream=Trickle(body, piece=999))

    chunks = await run(HttpExtractor("http://api.test/x", transport=httpx.MockTransport(handler)))
    assert [r for c in chunks for r in c.records] == records


async def test_an_encoding_it_did_not_ask_for_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "br"}, stream=Trickle(b"\x1b\x00"))

    with pytest.raises(TerminalError, match="encoded as 'br'; jetl reads gzip, deflate, zstd"):
        await run(HttpExtractor("http://api.test/x", transport=httpx.MockTransport(handler)))


# --- deadlines ------------------------------------------------------------------------------------


async def test_a_server_that_trickles_is_cut_at_the_request_deadline() -> None:
    """Each byte comes well inside httpx's read timeout, so only the deadline of the whole request can stop it."""
    stop = asyncio.Event()

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[")
        try:
            while not stop.is_set():
                await writer.drain()
                writer.write(b" ")
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        extractor = HttpExtractor(
            f"http://127.0.0.1:{port}/slow", timeout=5, limits=Limits(request_deadline=1), retry=Retry(max_retries=3)
        )
        with pytest.raises(TransientError) as info:
            await run(extractor)
    finally:
        stop.set()
        server.close()
        await server.wait_closed()
    message = str(info.value)
    assert f"GET http://127.0.0.1:{port}/slow (page 1)" in message
    assert "no complete response within Limits(request_deadline=1) seconds" in message


async def test_a_page_retried_past_its_deadline_is_handed_back() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="busy")

    extractor = HttpExtractor(
        "http://api.test/busy",
        retry=Retry(max_retries=1_000_000, backoff=0.05, max_backoff=0.05),
        limits=Limits(page_deadline=0.5),
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(TransientError, match=r"GET http://api.test/busy \(page 1\): not fetched within "):
        await run(extractor)


# --- secrets --------------------------------------------------------------------------------------

TOKEN = "tk-9f8e7d6c5b4a"
SECRETS: list[Any] = [
    pytest.param({"auth": BearerAuth(TOKEN)}, id="bearer"),
    pytest.param({"auth": BasicAuth("etl", SecretStr(TOKEN))}, id="basic"),
    pytest.param({"auth": ApiKeyAuth("X-Api-Key", TOKEN)}, id="key-header"),
    pytest.param({"auth": ApiKeyAuth("api_key", TOKEN, location="query")}, id="key-query"),
    pytest.param({"headers": {"X-Partner": SecretStr(TOKEN)}}, id="secret-header"),
    pytest.param({"params": {"sig": SecretStr(TOKEN)}}, id="secret-param"),
]


def echo(status: int) -> Callable[[httpx.Request], httpx.Response]:
    """An API that quotes the whole request back in its error body, as some do."""

    def handler(request: httpx.Request) -> httpx.Response:
        usual = {"accept", "accept-encoding", "connection", "host", "user-agent"}
        quoted = {"url": str(request.url), "headers": {k: v for k, v in request.headers.items() if k not in usual}}
        return httpx.Response(status, text=f"rejected {json.dumps(quoted)}")

    return handler


def exposed(text: str, options: dict[str, Any]) -> list[str]:
    """Every form of the secret that `text` shows."""
    forms = [TOKEN]
    auth: Auth | None = options.get("auth")
    if auth is not None:
        forms += [v.partition(" ")[2] or v for v in auth.headers().values()]
    return [form for form in forms if form in text]


@pytest.mark.parametrize("options", SECRETS)
@pytest.mark.parametrize("status", [400, 401])
async def test_a_secret_an_api_echoes_is_masked_in_the_error(options: dict[str, Any], status: int) -> None:
    extractor = HttpExtractor("http://api.test/items", transport=httpx.MockTransport(echo(status)), **options)
    with pytest.raises(TerminalError) as info:
        await run(extractor)
    text = f"{type(info.value).__name__}: {info.value}"  # as the run.failed event and the log carry it
    assert f"HTTP {status}" in text and MASK in text  # the body is still shown, the secret in it masked
    assert exposed(text, options) == []
    assert TOKEN not in repr(info.value.__cause__)


@pytest.mark.parametrize("options", SECRETS)
async def test_a_secret_never_reaches_a_log_line(options: dict[str, Any]) -> None:
    HttpExtractor("http://api.test/items", **options)  # the extractor enters its secrets in the process's list
    line = {"event": "upstream said", "detail": f"token {TOKEN} refused", "nested": [{"body": f"k={TOKEN}"}]}
    shown = json.dumps(redact_secrets(None, "warning", line))
    assert TOKEN not in shown and MASK in shown


async def test_a_secret_in_a_retried_failure_is_masked_to_the_end(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(503, text=f"busy, {request.headers['Authorization']}")
        return httpx.Response(403, text=f"forbidden for {request.headers['Authorization']}")

    extractor = HttpExtractor(
        "http://api.test/items",
        auth=BearerAuth(TOKEN),
        retry=Retry(backoff=0.001, max_backoff=0.001),
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(TerminalError) as info:
        await run(extractor)
    assert TOKEN not in str(info.value) and "forbidden for ***" in str(info.value)
    assert TOKEN not in caplog.text


async def test_a_next_link_that_carries_the_key_is_shown_masked_in_origins() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "2":
            return httpx.Response(200, json={"items": [{"id": 2}], "next": None})
        # the API hands back its own next link, with the key under a name the extractor does not know
        return httpx.Response(200, json={"items": [{"id": 1}], "next": f"http://api.test/x?page=2&k={TOKEN}"})

    extractor = HttpExtractor(
        "http://api.test/x",
        records_path="items",
        paginate=NextUrlPagination(path="next"),
        auth=ApiKeyAuth("api_key", TOKEN, location="query"),
        transport=httpx.MockTransport(handler),
    )
    chunks = await run(extractor)
    origins = [o for c in chunks for o in c.origins or []]
    assert origins == ["GET http://api.test/x#0", "GET http://api.test/x?page=2&k=***#0"]
