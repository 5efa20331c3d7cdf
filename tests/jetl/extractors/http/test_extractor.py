"""HttpExtractor against a fake paged JSON API with injectable faults.

The same `FakeApi` answers twice over: in memory through `httpx.MockTransport` (unit), and behind a real
threading HTTP server on 127.0.0.1 (marked `integration`), so one test body covers both.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from jetl.errors import ConfigError, TerminalError, TransientError
from jetl.extractors.http import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    CursorPagination,
    HttpExtractor,
    Incremental,
    Limits,
    LinkHeaderPagination,
    NextUrlPagination,
    OffsetPagination,
    PageNumberPagination,
    Retry,
)
from jetl.extractors.http.retry import _retry_after
from jetl.messages.wire import dumps
from jetl.protocols import Chunk, ExtractContext, Extractor
from jetl.testing.contracts import ExtractorContract

BASE = datetime(2024, 5, 1, tzinfo=UTC)


def fast(**options: Any) -> Retry:
    """Retries without waiting, for tests."""
    return Retry(backoff=0.001, max_backoff=0.01, **options)


FAST = {"retry": fast()}


def stamp(i: int) -> str:
    """The `updated_at` of item i: grows with i, ISO 8601 with a Z."""
    return (BASE + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")


def item(i: int) -> dict[str, Any]:
    """One record of the fake API."""
    return {"id": i, "name": f"item {i}", "updated_at": stamp(i)}


@dataclass
class Reply:
    """What the fake API answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds before answering (MockTransport raises ReadTimeout instead)."""
    drop: bool = False
    """Close the connection without an answer (MockTransport raises RemoteProtocolError)."""


@dataclass
class Fault:
    """Answer `reply` instead of the page, `times` times, to requests whose path?query contains `match`."""

    match: str
    reply: Reply
    times: int = 1


@dataclass
class Seen:
    """A request the fake API received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


def ok(payload: Any, headers: dict[str, str] | None = None) -> Reply:
    """A 200 JSON reply."""
    return Reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


class FakeApi:
    """A paged JSON API over `items`, one endpoint per pagination style, with faults and an auth check."""

    def __init__(self, count: int = 25) -> None:
        self.items = [item(i) for i in range(1, count + 1)]
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.required: tuple[str, str, str] | None = None
        """(where, name, value): 'header' or 'query', and the credential every request must carry."""
        self.base_url = ""
        self.transport: httpx.AsyncBaseTransport | None = None
        self.lock = threading.Lock()

    def pages(self, path: str) -> list[dict[str, str]]:
        """Query strings of the requests seen on `path`, in order."""
        return [s.query for s in self.seen if s.path == path]

    def handle(self, method: str, url: httpx.URL, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one request."""
        query = dict(url.params)
        with self.lock:
            self.seen.append(Seen(method, url.path, query, headers, body, time.monotonic()))
            target = url.path + ("?" + url.query.decode() if url.query else "")
            for fault in self.faults:
                if fault.times > 0 and fault.match in target:
                    fault.times -= 1
                    return fault.reply
        if self.required is not None:
            where, name, value = self.required
            got = headers.get(name.lower()) if where == "header" else query.get(name)
            if got != value:
                return Reply(401, b'{"error": "unauthorized"}')
        items = self.items
        if "updated_since" in query:
            since = datetime.fromisoformat(query["updated_since"])
            items = [r for r in items if datetime.fromisoformat(r["updated_at"]) > since]
        page = int(query.get("page", 1))
        size = int(query.get("per_page", 10))
        window = items[(page - 1) * size : page * size]
        more = page * size < len(items)
        match url.path:
            case "/items":
                return ok(items)
            case "/pages":
                return ok({"data": {"items": window}, "page": page})
            case "/offset":  # caps the limit at 8, as real APIs do
                offset, limit = int(query["offset"]), min(int(query["limit"]), 8)
                return ok({"results": items[offset : offset + limit]})
            case "/cursor":
                start = int(base64.b64decode(query["cursor"])) if "cursor" in query else 0
                end = start + 10
                token = base64.b64encode(str(end).encode()).decode() if end < len(items) else None
                return ok({"items": items[start:end], "meta": {"next": token}})
            case "/link":
                link = {"Link": f'<{url.copy_merge_params({"page": page + 1})}>; rel="next"'} if more else {}
                return ok(window, link)
            case "/next":  # a relative next URL, Django REST style
                return ok({"results": window, "next": f"/next?page={page + 1}" if more else None})
            case "/elsewhere":  # the next page lives on another origin
                other = "http://localhost:1" if url.host == "127.0.0.1" else "http://other.test"
                return ok({"results": window, "next": f"{other}/next?page=2" if page == 1 else None})
            case "/search":
                wanted = set(json.loads(body)["ids"]) if body else set()
                return ok([r for r in items if r["id"] in wanted])
            case "/mixed":
                return ok([{"id": 1}, 5, "x", {"id": 2}])
            case "/loop":
                return ok({"items": [item(1)], "meta": {"next": "same"}})
            case "/not-a-list":
                return ok({"data": {"items": {"id": 1}}})
        return Reply(404, b'{"error": "no such route"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    api: FakeApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out closed its end: expected in the slow-page tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, 40 ms per page
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host, port = self.server.server_address[:2]
        url = httpx.URL(f"http://{host!s}:{port}{self.path}")
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.api.handle(self.command, url, headers, body)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _mock_transport(api: FakeApi) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        reply = api.handle(request.method, request.url, dict(request.headers), request.content)
        if reply.delay:
            raise httpx.ReadTimeout("simulated slow page", request=request)
        if reply.drop:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(reply.status, headers=reply.headers, content=reply.body)

    return httpx.MockTransport(handler)


@pytest.fixture(params=["mock", pytest.param("real", marks=pytest.mark.integration)])
def api(request: pytest.FixtureRequest) -> Iterator[FakeApi]:
    """The fake API, in memory or behind a real HTTP server on a free port of 127.0.0.1."""
    fake = FakeApi()
    if request.param == "mock":
        fake.base_url = "http://api.test"
        fake.transport = _mock_transport(fake)
        yield fake
        return
    server = _Server(("127.0.0.1", 0), _Handler)
    server.api = fake
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make(api: FakeApi, path: str, **kwargs: Any) -> HttpExtractor:
    """An extractor for `path` of the fake API."""
    return HttpExtractor(api.base_url + path, transport=api.transport, **kwargs)


async def collect(extractor: HttpExtractor, ctx: ExtractContext | None = None) -> list[Chunk]:
    """Every chunk of one run, each checked against the chunk bound."""
    chunks = [c async for c in extractor.extract(ctx or ExtractContext(pipeline="api", run_id="r1"))]
    for chunk in chunks:
        assert 0 < len(chunk.records) + len(chunk.rejected) <= extractor.chunk_size
        assert chunk.origins is not None and len(chunk.origins) == len(chunk.records)
        dumps(chunk.records)  # what the framework sends on the wire must encode
    return chunks


def ids(chunks: list[Chunk]) -> list[int]:
    """The `id` of every record, in order."""
    return [r["id"] for c in chunks for r in c.records]


# --- pagination -----------------------------------------------------------------------------------


async def test_no_pagination_the_body_is_the_list(api: FakeApi) -> None:
    extractor = make(api, "/items", chunk_size=10)
    assert isinstance(extractor, Extractor)
    chunks = await collect(extractor)
    assert [len(c.records) for c in chunks] == [10, 10, 5]
    assert ids(chunks) == list(range(1, 26))
    assert chunks[0].origins is not None and chunks[0].origins[3] == f"GET {api.base_url}/items#3"
    assert len(api.seen) == 1
    assert extractor.next_cursor() is None


async def test_page_number_pagination_stops_on_an_empty_page(api: FakeApi) -> None:
    extractor = make(
        api,
        "/pages",
        records_path="data.items",
        paginate=PageNumberPagination(size_param="per_page", size=10),
        chunk_size=7,
    )
    chunks = await collect(extractor)
    assert ids(chunks) == list(range(1, 26))
    assert max(len(c.records) for c in chunks) == 7
    assert [q["page"] for q in api.pages("/pages")] == ["1", "2", "3", "4"]
    origins = [o for c in chunks for o in (c.origins or [])]
    assert origins[20] == f"GET {api.base_url}/pages?page=3&per_page=10#0"
    assert chunks[-1].position == {"page": 4, "url": f"{api.base_url}/pages?page=4&per_page=10", "index": 0}


async def test_offset_pagination_advances_by_what_the_server_returned(api: FakeApi) -> None:
    extractor = make(api, "/offset", records_path="results", paginate=OffsetPagination(limit=10))
    chunks = await collect(extractor)
    assert ids(chunks) == list(range(1, 26))  # the server capped limit=10 to 8: nothing skipped, nothing twice
    assert [q["offset"] for q in api.pages("/offset")] == ["0", "8", "16", "24", "25"]


async def test_cursor_pagination_sends_the_token_from_the_body(api: FakeApi) -> None:
    extractor = make(api, "/cursor", records_path="items", paginate=CursorPagination(path="meta.next", param="cursor"))
    assert ids(await collect(extractor)) == list(range(1, 26))
    assert [q.get("cursor") for q in api.pages("/cursor")] == [None, "MTA=", "MjA="]


async def test_link_header_pagination(api: FakeApi) -> None:
    extractor = make(api, "/link", params={"per_page": 10}, paginate=LinkHeaderPagination())
    assert ids(await collect(extractor)) == list(range(1, 26))
    assert [q["page"] for q in api.pages("/link") if "page" in q] == ["2", "3"]
    assert len(api.pages("/link")) == 3


async def test_next_url_in_the_body_relative_links_resolve(api: FakeApi) -> None:
    extractor = make(api, "/next", records_path="results", paginate=NextUrlPagination(path="next"))
    assert ids(await collect(extractor)) == list(range(1, 26))
    assert len(api.pages("/next")) == 3


async def test_a_repeated_next_token_is_a_terminal_loop(api: FakeApi) -> None:
    extractor = make(api, "/loop", records_path="items", paginate=CursorPagination(path="meta.next"))
    with pytest.raises(TerminalError, match="same next token twice"):
        await collect(extractor)


async def test_max_pages_caps_a_run(api: FakeApi) -> None:
    extractor = make(
        api, "/pages", records_path="data.items", paginate=PageNumberPagination(), limits=Limits(max_pages=2)
    )
    assert ids(await collect(extractor)) == list(range(1, 21))


# --- faults ---------------------------------------------------------------------------------------


async def test_429_waits_as_long_as_retry_after_says(api: FakeApi) -> None:
    api.faults.append(Fault("page=2", Reply(429, b"slow down", {"Retry-After": "0.3"})))
    extractor = make(api, "/pages", records_path="data.items", paginate=PageNumberPagination(), **FAST)
    assert ids(await collect(extractor)) == list(range(1, 26))
    page2 = [s.at for s in api.seen if s.query.get("page") == "2"]
    assert len(page2) == 2
    assert page2[1] - page2[0] >= 0.29  # the backoff alone would have waited ~1 ms


async def test_5xx_then_success_is_retried(api: FakeApi) -> None:
    api.faults.append(Fault("page=1", Reply(500, b"oops"), times=2))
    api.faults.append(Fault("page=3", Reply(503, b"busy")))
    extractor = make(api, "/pages", records_path="data.items", paginate=PageNumberPagination(), **FAST)
    assert ids(await collect(extractor)) == list(range(1, 26))
    assert [q["page"] for q in api.pages("/pages")] == ["1", "1", "1", "2", "3", "3", "4"]


async def test_5xx_past_max_retries_is_transient_naming_url_and_status(api: FakeApi) -> None:
    api.faults.append(Fault("page=2", Reply(503, b"down for maintenance"), times=99))
    extractor = make(
        api, "/pages", records_path="data.items", paginate=PageNumberPagination(), retry=fast(max_retries=2)
    )
    with pytest.raises(TransientError) as info:
        await collect(extractor)
    message = str(info.value)
    assert f"GET {api.base_url}/pages?page=2" in message
    assert "HTTP 503" in message and "after 3 attempts" in message
    assert len(api.pages("/pages")) == 1 + 3


async def test_retry_after_beyond_the_limit_is_transient_at_once(api: FakeApi) -> None:
    api.faults.append(Fault("/items", Reply(429, b"", {"Retry-After": "3600"}), times=99))
    extractor = make(api, "/items", retry=fast(max_retry_after=60))
    with pytest.raises(TransientError, match="Retry-After 3600s, longer than max_retry_after=60s"):
        await collect(extractor)
    assert len(api.seen) == 1  # the bus redelivers later; this task does not sleep for an hour


async def test_a_slow_page_times_out_and_is_retried(api: FakeApi) -> None:
    api.faults.append(Fault("page=2", Reply(delay=1.0)))
    extractor = make(api, "/pages", records_path="data.items", paginate=PageNumberPagination(), timeout=0.25, **FAST)
    started = time.monotonic()
    assert ids(await collect(extractor)) == list(range(1, 26))
    assert time.monotonic() - started < 1.0  # gave up on the slow answer instead of waiting it out
    assert [q["page"] for q in api.pages("/pages")] == ["1", "2", "2", "3", "4"]


async def test_a_dropped_connection_is_retried(api: FakeApi) -> None:
    api.faults.append(Fault("/items", Reply(drop=True)))
    assert ids(await collect(make(api, "/items", **FAST))) == list(range(1, 26))
    assert len(api.seen) == 2


async def test_a_malformed_page_is_terminal_naming_the_page(api: FakeApi) -> None:
    api.faults.append(Fault("page=2", Reply(200, b"<html>Bad gateway</html>", {"Content-Type": "text/html"})))
    extractor = make(api, "/pages", records_path="data.items", paginate=PageNumberPagination(), **FAST)
    with pytest.raises(TerminalError, match="not JSON") as info:
        await collect(extractor)
    assert f"GET {api.base_url}/pages?page=2 (page 2)" in str(info.value)
    assert "<html>Bad gateway" in str(info.value)
    assert len(api.pages("/pages")) == 2  # not retried


async def test_a_4xx_is_terminal_with_status_and_body(api: FakeApi) -> None:
    extractor = make(api, "/nowhere", **FAST)
    with pytest.raises(TerminalError) as info:
        await collect(extractor)
    assert not isinstance(info.value, TransientError)
    assert f"GET {api.base_url}/nowhere (page 1): HTTP 404 Not Found" in str(info.value)
    assert "no such route" in str(info.value)
    assert len(api.seen) == 1


async def test_a_missing_records_path_is_terminal(api: FakeApi) -> None:
    with pytest.raises(TerminalError, match=r"no 'data\.rows'.*top-level keys: \['data', 'page'\]"):
        await collect(make(api, "/pages", records_path="data.rows", paginate=PageNumberPagination()))


async def test_records_that_are_not_a_list_are_terminal(api: FakeApi) -> None:
    with pytest.raises(TerminalError, match=r"'data\.items' is a dict, not a list"):
        await collect(make(api, "/not-a-list", records_path="data.items"))


async def test_items_that_are_not_objects_are_rejected_not_dropped(api: FakeApi) -> None:
    chunks = await collect(make(api, "/mixed"))
    assert ids(chunks) == [1, 2]
    assert chunks[0].rejected == [
        (f"GET {api.base_url}/mixed#1", "expected a JSON object, got int"),
        (f"GET {api.base_url}/mixed#2", "expected a JSON object, got str"),
    ]


@pytest.mark.integration
async def test_nothing_listening_is_transient() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extractor = HttpExtractor(f"http://127.0.0.1:{port}/items", retry=fast(max_retries=1))
    with pytest.raises(TransientError, match=rf"GET http://127.0.0.1:{port}/items \(page 1\): ConnectError"):
        await collect(extractor)


# --- auth -----------------------------------------------------------------------------------------

SECRET = "s3cret-t0ken"
AUTHS = [
    pytest.param(BearerAuth(SECRET), ("header", "authorization", f"Bearer {SECRET}"), id="bearer"),
    pytest.param(
        BasicAuth("etl", SecretStr(SECRET)),
        ("header", "authorization", "Basic " + base64.b64encode(f"etl:{SECRET}".encode()).decode()),
        id="basic",
    ),
    pytest.param(ApiKeyAuth("X-Api-Key", SECRET), ("header", "x-api-key", SECRET), id="key-in-header"),
    pytest.param(ApiKeyAuth("api_key", SECRET, location="query"), ("query", "api_key", SECRET), id="key-in-query"),
]


@pytest.mark.parametrize(("auth", "required"), AUTHS)
async def test_auth_is_sent_and_never_shown(api: FakeApi, auth: Any, required: tuple[str, str, str]) -> None:
    api.required = required
    extractor = make(api, "/link", params={"per_page": 10}, paginate=LinkHeaderPagination(), auth=auth)
    chunks = await collect(extractor)
    assert ids(chunks) == list(range(1, 26))
    assert len(api.seen) == 3  # the key also rode along on the followed links
    assert SECRET not in repr(extractor) + repr(auth)
    shown = repr([(c.origins, c.position) for c in chunks])
    assert SECRET not in shown
    assert "api_key" not in shown  # a key in the query is dropped from origins, not just masked


@pytest.mark.parametrize(("auth", "required"), AUTHS)
async def test_wrong_credentials_are_terminal_without_the_secret(
    api: FakeApi, auth: Any, required: tuple[str, str, str]
) -> None:
    api.required = (required[0], required[1], "something else")
    with pytest.raises(TerminalError, match="HTTP 401") as info:
        await collect(make(api, "/items", auth=auth, **FAST))
    assert SECRET not in str(info.value)
    assert len(api.seen) == 1


@pytest.mark.parametrize("api", ["mock"], indirect=True)  # the other origin is simulated in memory
async def test_credentials_stay_on_the_configured_origin(api: FakeApi) -> None:
    api.required = ("header", "authorization", f"Bearer {SECRET}")
    extractor = make(api, "/elsewhere", records_path="results", paginate=NextUrlPagination(), auth=BearerAuth(SECRET))
    with pytest.raises(TerminalError, match="HTTP 401"):  # the other host asked for credentials it did not get
        await collect(extractor)
    assert [s.headers.get("authorization") for s in api.seen] == [f"Bearer {SECRET}", None]


# --- incremental, interval, body, rate ------------------------------------------------------------


async def test_incremental_second_run_fetches_only_new_records(api: FakeApi) -> None:
    extractor = make(
        api,
        "/pages",
        records_path="data.items",
        paginate=PageNumberPagination(),
        incremental=Incremental(param="updated_since", field="updated_at"),
    )
    first = await collect(extractor, ExtractContext(pipeline="api", run_id="r1"))
    assert ids(first) == list(range(1, 26))
    cursor = extractor.next_cursor()
    assert cursor == {"field": "updated_at", "value": stamp(25)}
    assert first[-1].position is not None and first[-1].position["high_water"] == stamp(25)
    assert "updated_since" not in api.seen[0].query

    api.items += [item(i) for i in (26, 27, 28)]
    api.seen.clear()
    stored = json.loads(json.dumps(cursor))
    second = await collect(extractor, ExtractContext(pipeline="api", run_id="r2", cursor=stored))
    assert ids(second) == [26, 27, 28]
    assert api.seen[0].query["updated_since"] == stamp(25)
    assert extractor.next_cursor() == {"field": "updated_at", "value": stamp(28)}

    third = await collect(extractor, ExtractContext(pipeline="api", run_id="r3", cursor=extractor.next_cursor()))
    assert third == []
    assert extractor.next_cursor() == {"field": "updated_at", "value": stamp(28)}  # kept, not reset


async def test_incremental_initial_and_timezone_aware_comparison(api: FakeApi) -> None:
    extractor = make(
        api,
        "/items",
        incremental=Incremental(param="updated_since", field="updated_at", initial=BASE + timedelta(minutes=22)),
    )
    assert ids(await collect(extractor)) == [23, 24, 25]
    assert api.seen[0].query["updated_since"] == "2024-05-01T00:22:00+00:00"
    # an earlier value written with another offset still sorts as the instant it is
    api.items = [
        {"id": 1, "updated_at": "2024-05-01T02:00:00+02:00"},
        {"id": 2, "updated_at": "2024-05-01T00:30:00Z"},
    ]
    await collect(extractor)
    assert extractor.next_cursor() == {"field": "updated_at", "value": "2024-05-01T00:30:00Z"}


async def test_a_cursor_for_another_field_is_refused(api: FakeApi) -> None:
    extractor = make(api, "/items", incremental=Incremental(param="updated_since", field="updated_at"))
    ctx = ExtractContext(pipeline="api", run_id="r2", cursor={"field": "modified", "value": "2024-01-01"})
    with pytest.raises(ConfigError, match="tracks field 'modified'"):
        await collect(extractor, ctx)


async def test_the_data_interval_is_sent_as_params(api: FakeApi) -> None:
    extractor = make(api, "/items", interval_start_param="from", interval_end_param="to")
    ctx = ExtractContext(
        pipeline="api", run_id="d", data_interval_start=BASE, data_interval_end=BASE + timedelta(days=1)
    )
    await collect(extractor, ctx)
    assert api.seen[0].query == {"from": "2024-05-01T00:00:00+00:00", "to": "2024-05-02T00:00:00+00:00"}


async def test_post_sends_the_json_body(api: FakeApi) -> None:
    extractor = make(api, "/search", method="POST", json={"ids": [3, 5, 8]}, headers={"X-Trace": "t1"})
    assert ids(await collect(extractor)) == [3, 5, 8]
    assert api.seen[0].method == "POST" and api.seen[0].headers["x-trace"] == "t1"
    assert (await collect(extractor))[0].origins == [f"POST {api.base_url}/search#{i}" for i in range(3)]


async def test_requests_per_second_spaces_the_requests(api: FakeApi) -> None:
    extractor = make(
        api, "/pages", records_path="data.items", paginate=PageNumberPagination(), limits=Limits(requests_per_second=20)
    )
    started = time.monotonic()
    await collect(extractor)
    assert len(api.seen) == 4
    assert time.monotonic() - started >= 3 * 0.05 - 0.005  # four request starts, 50 ms apart


# --- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://h/x"}, "not an absolute http"),
        ({"url": "/relative"}, "not an absolute http"),
        ({"url": "http://user:pw@h/x"}, "put credentials in auth="),
        ({"method": "DELETE"}, "method must be GET or POST"),
        ({"json": {"a": 1}}, "a json body needs method='POST'"),
        ({"chunk_size": 0}, "chunk_size must be an integer of at least 1"),
        ({"retry": {"max_retries": 3}}, "is not a Retry"),
        ({"limits": 5}, "is not a Limits"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"records_path": "data..items"}, "not a dotted path"),
        ({"paginate": "pages"}, "is not a Paginator"),
        ({"auth": "token"}, "is not an Auth"),
        ({"params": {"page": 1}, "paginate": PageNumberPagination()}, "'page' is set by both params and"),
        (
            {"url": "http://h/x?cursor=a", "paginate": CursorPagination()},
            "'cursor' is set by both params and",
        ),
        (
            {"paginate": OffsetPagination(), "incremental": Incremental(param="limit", field="ts")},
            "'limit' is set by both OffsetPagination and incremental",
        ),
        (
            {"params": {"api_key": "x"}, "auth": ApiKeyAuth("api_key", "k", "query")},
            "'api_key' is set by both",
        ),
        ({"headers": {"authorization": "x"}, "auth": BearerAuth("t")}, "'Authorization' is set by both"),
        ({"interval_start_param": "d", "interval_end_param": "d"}, "'d' is set by both"),
        ({"verify": "/no/such/ca.pem"}, "cannot load the CA bundle"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, Any], message: str) -> None:
    url = kwargs.pop("url", "http://api.test/items")
    with pytest.raises(ConfigError, match=message):
        HttpExtractor(url, **kwargs)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BearerAuth(""), "bearer token is empty"),
        (lambda: BasicAuth("a:b", "pw"), "username without ':'"),
        (lambda: ApiKeyAuth("k", "v", location="cookie"), "must be 'header' or 'query'"),  # type: ignore[arg-type]
        (lambda: PageNumberPagination(size=10), "both size_param and size"),
        (lambda: OffsetPagination(limit=0), "limit must be at least 1"),
        (lambda: CursorPagination(path=""), "not a dotted path"),
        (lambda: Retry(max_retries=-1), "max_retries must be an integer of at least 0"),
        (lambda: Retry(backoff=-1), "backoff must be a number of seconds"),
        (lambda: Limits(max_pages=0), "max_pages must be an integer of at least 1"),
        (lambda: Limits(requests_per_second=0), "requests_per_second must be > 0"),
        (lambda: Limits(request_deadline=0), "request_deadline must be a number of seconds > 0"),
        (
            lambda: Incremental(param="since", field="ts", initial=[1]),
            "initial must be a string, number or datetime",
        ),
        (lambda: HttpExtractor("http://api.test/x", incremental=Incremental("ts")), "Incremental needs param="),
    ],
)
def test_bad_parts_fail_at_construction(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_secrets_are_hidden_in_reprs() -> None:
    extractor = HttpExtractor("https://api.test/items", auth=BasicAuth("etl", SECRET))
    assert SECRET not in repr(extractor) + repr(extractor.auth)
    assert repr(extractor) == "HttpExtractor(GET 'https://api.test/items', auth=BasicAuth(...))"
    assert SECRET not in repr(ApiKeyAuth("k", SECRET)) + repr(BearerAuth(SECRET))


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after("0.5") == 0.5
    assert _retry_after("-3") == 0.0
    assert _retry_after("soon") is None
    assert _retry_after(None) is None
    later = datetime.now(UTC) + timedelta(seconds=30)
    seconds = _retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert seconds is not None and 25 <= seconds <= 31


# --- the Extractor contract suite ---------------------------------------------------------------------------


class TestHttpExtractorContract(ExtractorContract):
    """The shared Extractor suite, over the in-memory fake API, paged and incremental."""

    max_chunk_size = 7

    @pytest.fixture
    def extractor(self) -> Extractor:
        api = FakeApi()
        return HttpExtractor(
            "http://api.test/pages",
            records_path="data.items",
            paginate=PageNumberPagination(),
            incremental=Incremental(param="updated_since", field="updated_at"),
            chunk_size=7,
            transport=_mock_transport(api),
        )

    @pytest.fixture
    def expected_records(self) -> int:
        return 25

    @pytest.fixture
    def malformed_extractor(self) -> Extractor:
        return HttpExtractor("http://api.test/mixed", transport=_mock_transport(FakeApi()))


# --- redirects, response size and page limits ----------------------------------------------------


class Hops:
    """A MockTransport that answers `routes` (host + path -> reply) and records what each host received."""

    def __init__(self, routes: dict[str, httpx.Response]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, dict[str, str]]] = []

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            where = f"{request.url.host}{request.url.path}"
            self.seen.append((where, dict(request.headers)))
            return self.routes.get(where, httpx.Response(404))

        return httpx.MockTransport(handler)


def moved(to: str, status: int = 302) -> httpx.Response:
    return httpx.Response(status, headers={"Location": to})


@pytest.mark.parametrize(
    "auth",
    [ApiKeyAuth("X-Api-Key", "k-123"), BearerAuth("t-123"), BasicAuth("u", "p-123")],
    ids=["api-key-header", "bearer", "basic"],
)
async def test_a_redirect_to_another_origin_carries_no_credentials(auth: Any) -> None:
    hops = Hops(
        {
            "api.test/start": moved("/moved"),  # same origin: credentials go along
            "api.test/moved": moved("https://evil.test/collect"),
            "evil.test/collect": httpx.Response(200, json=[{"id": 1}]),
        }
    )
    headers = {"X-Session-Token": "s-123", "Accept": "application/json", "X-Client": "jetl"}
    extractor = HttpExtractor("http://api.test/start", auth=auth, headers=headers, transport=hops.transport())
    assert ids(await collect(extractor)) == [1]
    sent = {where: h for where, h in hops.seen}
    secrets = ("k-123", "t-123", "s-123", base64.b64encode(b"u:p-123").decode())
    assert {k.lower(): v for k, v in auth.headers().items()}.items() <= sent["api.test/moved"].items()
    assert sent["api.test/moved"]["x-session-token"] == "s-123"
    elsewhere = sent["evil.test/collect"]
    assert not any(s in str(elsewhere) for s in secrets), elsewhere
    assert "authorization" not in elsewhere and "x-api-key" not in elsewhere and "x-session-token" not in elsewhere
    assert elsewhere["x-client"] == "jetl" and elsewhere["accept"] == "application/json"  # harmless ones stay


async def test_redirects_past_the_cap_are_a_terminal_error() -> None:
    hops = Hops({"api.test/a": moved("/b"), "api.test/b": moved("/a")})
    extractor = HttpExtractor("http://api.test/a", limits=Limits(max_redirects=3), transport=hops.transport())
    with pytest.raises(TerminalError, match=r"pipeline 'api': GET http://api.test/a .*max_redirects=3"):
        await collect(extractor)
    assert len(hops.seen) == 4  # the request and three redirects, then it stops


async def test_a_post_redirected_with_303_becomes_a_get_without_its_body() -> None:
    hops = Hops({"api.test/search": moved("/results", 303), "api.test/results": httpx.Response(200, json=[{"id": 7}])})
    extractor = HttpExtractor("http://api.test/search", method="POST", json={"q": 1}, transport=hops.transport())
    assert ids(await collect(extractor)) == [7]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_a_response_over_max_response_bytes_is_refused(declared: bool) -> None:
    big = json.dumps([{"id": i, "pad": "x" * 100} for i in range(100)]).encode()

    async def stream() -> Any:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    def handler(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=big)
        return httpx.Response(200, content=stream())  # no Content-Length: counted as it arrives

    extractor = HttpExtractor(
        "http://api.test/big", limits=Limits(max_response_bytes=5000), transport=httpx.MockTransport(handler)
    )
    with pytest.raises(TerminalError, match=r"pipeline 'api': GET http://api.test/big .*max_response_bytes=5000"):
        await collect(extractor)
    roomy = HttpExtractor(
        "http://api.test/big", limits=Limits(max_response_bytes=len(big)), transport=httpx.MockTransport(handler)
    )
    assert ids(await collect(roomy)) == list(range(100))


async def test_more_pages_than_page_limit_is_an_error_not_a_quiet_stop(api: FakeApi) -> None:
    extractor = make(
        api, "/pages", records_path="data.items", paginate=PageNumberPagination(), limits=Limits(page_limit=2)
    )
    with pytest.raises(TerminalError, match=r"pipeline 'api': .*more than page_limit=2 pages"):
        await collect(extractor)


def test_limits_are_checked_at_construction() -> None:
    for kwargs, message in (
        ({"max_redirects": -1}, "max_redirects must be an integer of at least 0"),
        ({"max_response_bytes": 0}, "max_response_bytes must be an integer of at least 1"),
        ({"page_limit": 0}, "page_limit must be an integer of at least 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            Limits(**kwargs)
