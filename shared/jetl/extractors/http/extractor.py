"""`HttpExtractor`: one run pages through a JSON API, turning each page into records, origins and a cursor.

It owns the request loop: auth applied per origin, pagination (`paginate`), the incremental high-water mark
(`incremental`), redirects (`redirects`), retries and pacing (`retry`), and decoding the body into records. Errors
it raises are listed in the package docstring (`jetl.extractors.http`).
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson

from jetl.errors import ConfigError, TerminalError, TransientError
from jetl.extractors.http.auth import Auth
from jetl.extractors.http.incremental import Incremental, _Filter, _param
from jetl.extractors.http.paginate import Page, Paginator, ParamValue, _NoPagination
from jetl.extractors.http.paths import _MISSING, _lookup, _parse_path
from jetl.extractors.http.redirects import fetch, headers_for
from jetl.extractors.http.retry import _RETRYABLE_ERRORS, _delay, _Pacer, _retry_after, _retryable
from jetl.logging import get_logger
from jetl.positions import order_key
from jetl.protocols import Check, Chunk, ExtractContext, Partition, Record

if TYPE_CHECKING:
    from jetl.settings import JetlSettings

Method = Literal["GET", "POST"]
_SNIPPET = 200
_log = get_logger("jetl.extractors.http")


class _Borrowed(httpx.AsyncBaseTransport):
    """A caller's transport: used by every run's client, closed by none of them (the caller owns it)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


class HttpExtractor:
    """Pages through a JSON API and yields its records in chunks of at most `chunk_size`.

    Example:
        HttpExtractor(
            "https://api.example.com/v1/orders",
            records_path="data.items",
            paginate=PageNumberPagination(size_param="per_page", size=100),
            auth=BearerAuth(settings.api_token),
            incremental=Incremental(param="updated_since", field="updated_at"),
        )

    With `window` (and `interval_start_param` / `interval_end_param`, which the API filters on), a run's data
    interval splits into windows of that length, the last one shorter, for extractor replicas to share
    (`partitions`): each window is requested with its own start and end and paginated on its own. A run without a
    data interval is not split. Windows cannot be combined with `incremental`: its cursor is the furthest record
    read, unknown until every window is read, and a run's cursor must be known when it is split.
    """

    def __init__(
        self,
        url: str,
        *,
        method: Method = "GET",
        params: Mapping[str, ParamValue] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        records_path: str | None = None,
        paginate: Paginator | None = None,
        auth: Auth | None = None,
        incremental: Incremental | None = None,
        interval_start_param: str | None = None,
        interval_end_param: str | None = None,
        window: timedelta | None = None,
        timeout: float | httpx.Timeout = 30.0,
        verify: bool | str | ssl.SSLContext = True,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        requests_per_second: float | None = None,
        max_pages: int | None = None,
        page_limit: int = 100_000,
        max_redirects: int = 10,
        max_response_bytes: int = 64 * 1024 * 1024,
        chunk_size: int = 5000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        try:
            base = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"HttpExtractor: {url!r} is not a URL: {exc}") from exc
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(f"HttpExtractor: {url!r} is not an absolute http(s) URL")
        if base.userinfo:
            raise ConfigError("HttpExtractor: put credentials in auth=..., not in the URL (they would be logged)")
        upper = method.upper() if isinstance(method, str) else method
        if upper != "GET" and upper != "POST":
            raise ConfigError(f"HttpExtractor: method must be GET or POST, not {method!r}")
        if json is not None and upper != "POST":
            raise ConfigError("HttpExtractor: a json body needs method='POST'")
        if paginate is not None and not isinstance(paginate, Paginator):
            raise ConfigError(f"HttpExtractor: paginate={paginate!r} is not a Paginator")
        if auth is not None and not isinstance(auth, Auth):
            raise ConfigError(f"HttpExtractor: auth={auth!r} is not an Auth (BearerAuth, BasicAuth, ApiKeyAuth)")
        if incremental is not None and not isinstance(incremental, Incremental):
            raise ConfigError(f"HttpExtractor: incremental={incremental!r} is not an Incremental")
        for name, number, low in (
            ("chunk_size", chunk_size, 1),
            ("max_retries", max_retries, 0),
            ("max_pages", 1 if max_pages is None else max_pages, 1),
            ("page_limit", page_limit, 1),
            ("max_redirects", max_redirects, 0),
            ("max_response_bytes", max_response_bytes, 1),
        ):
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                raise ConfigError(f"HttpExtractor: {name} must be an integer of at least {low}, not {number!r}")
        for name, seconds in (
            ("backoff", backoff),
            ("max_backoff", max_backoff),
            ("max_retry_after", max_retry_after),
        ):
            if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
                raise ConfigError(f"HttpExtractor: {name} must be a number of seconds >= 0, not {seconds!r}")
        if requests_per_second is not None and not (
            isinstance(requests_per_second, (int, float)) and 0 < requests_per_second < math.inf
        ):
            raise ConfigError(f"HttpExtractor: requests_per_second must be > 0, not {requests_per_second!r}")
        if not isinstance(timeout, httpx.Timeout) and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"HttpExtractor: timeout must be a number of seconds > 0, not {timeout!r}")
        if window is not None:
            if not isinstance(window, timedelta) or window <= timedelta(0):
                raise ConfigError(f"HttpExtractor: window must be a positive timedelta, not {window!r}")
            if not (interval_start_param and interval_end_param):
                raise ConfigError(
                    "HttpExtractor: window= needs interval_start_param= and interval_end_param=, the query "
                    "parameters the API takes a window's start and end in"
                )
            if incremental is not None:
                raise ConfigError(
                    "HttpExtractor: window= and incremental= cannot go together: the run's cursor (the furthest "
                    "record) is not known until every window is read, and a split run's cursor must be known before"
                )

        self.url = str(base.copy_with(query=None, fragment=None))  # its query moves into self.params
        self.method: Method = "GET" if upper == "GET" else "POST"
        self.params: dict[str, ParamValue] = {**dict(base.params), **dict(params or {})}
        self.json = json
        self.headers = dict(headers or {})
        self.records_path = records_path
        self._records_parts = () if records_path is None else _parse_path(records_path, "records_path")
        self.paginate: Paginator = paginate or _NoPagination()
        self.auth = auth
        self.incremental = incremental
        self._field_parts = () if incremental is None else _parse_path(incremental.field, "incremental field")
        tie = None if incremental is None else incremental.tie_breaker
        self._key_parts = () if tie is None else _parse_path(tie, "incremental tie_breaker")
        self.interval_params = {"start": interval_start_param, "end": interval_end_param}
        self.window = window
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.max_pages = max_pages
        self.page_limit = page_limit
        self.max_redirects = max_redirects
        self.max_response_bytes = max_response_bytes
        self.chunk_size = chunk_size
        self._verify = self._tls(verify)
        self._transport = None if transport is None else _Borrowed(transport)
        self._pacer = _Pacer(requests_per_second)
        self._origin = (base.scheme, base.host, base.port)
        self._secret_params = set(auth.query()) if auth else set()
        self._cursor: dict[str, Any] | None = None
        self._check_names()

    @staticmethod
    def _tls(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
        """One TLS context for every run: building one costs tens of milliseconds (it loads the CA bundle)."""
        if isinstance(verify, ssl.SSLContext) or verify is False:
            return verify
        if verify is True:
            return httpx.create_ssl_context()
        if isinstance(verify, str):
            try:
                return ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"HttpExtractor: cannot load the CA bundle {verify!r}: {exc}") from exc
        raise ConfigError(f"HttpExtractor: verify must be True, False, a CA bundle path or an SSLContext: {verify!r}")

    def _check_names(self) -> None:
        """Every query parameter and credential header has one owner."""
        owners: dict[str, str] = {}

        def claim(names: set[str] | list[str], owner: str) -> None:
            for name in names:
                if name in owners:
                    raise ConfigError(f"HttpExtractor: parameter {name!r} is set by both {owners[name]} and {owner}")
                owners[name] = owner

        claim(list(self.params), "params")
        claim(self.paginate.param_names(), type(self.paginate).__name__)
        if self.incremental is not None:
            claim([self.incremental.param], "incremental")
        claim([p for p in self.interval_params.values() if p], "the interval parameters")
        if self.auth is not None:
            claim(sorted(self._secret_params), "auth")
            taken = {h.lower() for h in self.headers}
            clash = [h for h in self.auth.headers() if h.lower() in taken]
            if clash:
                raise ConfigError(f"HttpExtractor: header {clash[0]!r} is set by both headers and auth")
        if self.interval_params["start"] and self.interval_params["start"] == self.interval_params["end"]:
            raise ConfigError("HttpExtractor: interval_start_param and interval_end_param must differ")

    def __repr__(self) -> str:
        paging = "" if isinstance(self.paginate, _NoPagination) else f", paginate={self.paginate!r}"
        auth = "" if self.auth is None else f", auth={type(self.auth).__name__}(...)"
        return f"HttpExtractor({self.method} {self.url!r}{paging}{auth})"

    @property
    def keeps_cursor(self) -> bool:
        """Runs start from the `incremental` field's high-water mark (see `jetl.protocols.Extractor`)."""
        return self.incremental is not None

    def check(self, settings: JetlSettings) -> Check:
        """ok once constructed: URL, auth, pagination and limits were checked then; it sends no request."""
        return Check("ok", "configured")

    def next_cursor(self) -> dict[str, Any] | None:
        """The position reached after an incremental run (the start if nothing new): `{"field", "value"}`, plus
        `{"tie_breaker", "key"}` when a tie-breaker is declared."""
        return None if self._cursor is None else dict(self._cursor)

    def cursor_at(self, value: Any, key: Any = None) -> dict[str, Any]:
        """The cursor an operator seeds (`jetl cursor set`): the next run keeps records strictly after `value`
        (and `key`, the tie-breaker's value; None: after every record at `value`)."""
        if self.incremental is None:
            raise ConfigError(f"{self!r} is not incremental: it keeps no cursor")
        try:
            if key is not None:
                order_key(key)
            return self.incremental.cursor_at(value, key if self.incremental.tie_breaker else None)
        except TypeError as exc:
            raise ConfigError(f"{self!r}: {value!r} cannot be a cursor value: {exc}") from exc

    @property
    def cursor_field(self) -> str | None:
        """The record field the cursor follows (what `jetl cursor set --from-destination` takes the max of)."""
        return None if self.incremental is None else self.incremental.field

    @property
    def cursor_tie_breaker(self) -> str | None:
        """The record field that orders records sharing a cursor value (None when not declared)."""
        return None if self.incremental is None else self.incremental.tie_breaker

    # -- a run ------------------------------------------------------------------------------------

    def partitions(self, ctx: ExtractContext) -> list[Partition] | None:
        """With `window`, the run's data interval in windows (see the class docstring); None without a window or a
        data interval (the run is read whole)."""
        start, end = ctx.data_interval_start, ctx.data_interval_end
        if self.window is None or start is None or end is None:
            return None
        out: list[Partition] = []
        while start < end:
            stop = min(start + self.window, end)
            out.append(Partition({"start": start.isoformat(), "end": stop.isoformat()}))
            start = stop
        return out

    async def extract_partition(self, ctx: ExtractContext, partition: Partition) -> AsyncIterator[Chunk]:
        """The records of one window planned by `partitions`: the run, with the window as its data interval."""
        window = replace(
            ctx,
            data_interval_start=datetime.fromisoformat(partition.spec["start"]),
            data_interval_end=datetime.fromisoformat(partition.spec["end"]),
        )
        async for chunk in self.extract(window):
            yield chunk

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """Request page after page and yield chunks of at most `chunk_size` records, with their origins; an
        incremental run keeps only the records after the stored position."""
        start, inclusive = self._start(ctx)
        keep: _Filter | None = None
        if self.incremental is not None:
            keep = _Filter(self.incremental, self._field_parts, self._key_parts, start, inclusive)
            self._cursor = keep.cursor
        params = self._first_params(ctx, None if start is None else start[0])
        against = self._cursor  # the cursor records are held against (it moves as they are taken)
        records: list[Record] = []
        origins: list[str] = []
        rejected: list[tuple[str, str]] = []
        # Redirects are followed here, not by httpx: its rule keeps every header but Authorization on a redirect
        # to another host, so an API-key header would go wherever the server points.
        async with httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, verify=self._verify, transport=self._transport
        ) as client:
            url, page_params, number = self.url, params, 0
            while True:
                number += 1
                if number > self.page_limit:
                    raise TerminalError(
                        f"pipeline {ctx.pipeline!r}: {self.method} {self._shown(httpx.URL(url))}: more than "
                        f"page_limit={self.page_limit} pages; raise page_limit, or set max_pages to stop there"
                    )
                response, content = await self._send(client, url, page_params, number, ctx.pipeline)
                shown = self._shown(response.request.url)
                body = self._decode(response, content, shown, number)
                items = self._items(body, shown, number)
                for index, item in enumerate(items):
                    origin = f"{self.method} {shown}#{index}"
                    if not isinstance(item, dict):
                        rejected.append((origin, f"expected a JSON object, got {type(item).__name__}"))
                    elif keep is None:
                        records.append(item)
                        origins.append(origin)
                    else:
                        verdict = keep.take(item, origin)
                        if isinstance(verdict, str):
                            rejected.append((origin, verdict))
                        elif verdict:
                            records.append(item)
                            origins.append(origin)
                            self._cursor = keep.cursor
                    if len(records) + len(rejected) >= self.chunk_size:
                        yield self._chunk(records, origins, rejected, number, shown, index + 1)
                        records, origins, rejected = [], [], []
                if self.max_pages is not None and number >= self.max_pages:
                    break
                page = Page(number, url, page_params, response, body, len(items))
                following = self.paginate.next(page)
                if following is None:
                    break
                url, page_params = following
            if records or rejected:
                yield self._chunk(records, origins, rejected, number, shown, len(items))
        if keep is not None and keep.skipped:
            _log.info("records at or before the cursor skipped", skipped=keep.skipped, cursor=against)

    def _chunk(
        self,
        records: list[Record],
        origins: list[str],
        rejected: list[tuple[str, str]],
        page: int,
        url: str,
        index: int,
    ) -> Chunk:
        position: dict[str, Any] = {"page": page, "url": url, "index": index}
        if self._cursor is not None:
            position["high_water"] = self._cursor.get("value")
        return Chunk(records=records, origins=origins, position=position, rejected=rejected)

    def _start(self, ctx: ExtractContext) -> tuple[tuple[Any, Any] | None, bool]:
        """((value, key) the run starts after, whether records at it are kept): see `Incremental.start`."""
        if self.incremental is None:
            return None, False
        return self.incremental.start(ctx.cursor, repr(self))

    def _first_params(self, ctx: ExtractContext, start: Any) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.params)
        if self.incremental is not None and start is not None:
            params[self.incremental.param] = _param(start)
        for end, value in (("start", ctx.data_interval_start), ("end", ctx.data_interval_end)):
            name = self.interval_params[end]
            if name and value is not None:
                params[name] = _param(value)
        params.update(self.paginate.first())
        return params

    # -- one request ------------------------------------------------------------------------------

    def _shown(self, url: httpx.URL) -> str:
        """The URL as it may appear in logs, origins and errors: credentials in the query removed."""
        for name in self._secret_params:
            url = url.copy_remove_param(name)
        return str(url)

    def _same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == self._origin

    def _headers(self, url: httpx.URL) -> dict[str, str]:
        """The headers a request to `url` carries (see `redirects.headers_for`)."""
        auth = self.auth.headers() if self.auth is not None else {}
        return headers_for(url, self._same_origin(url), self.headers, auth)

    async def _send(
        self, client: httpx.AsyncClient, url: str, params: dict[str, Any], page: int, pipeline: str = ""
    ) -> tuple[httpx.Response, bytes]:
        target = httpx.URL(url)
        same_origin = self._same_origin(target)
        query = {**params, **self.auth.query()} if self.auth is not None and same_origin else params
        # Merge into the URL ourselves: httpx 0.28 drops a URL's own query (a next link's) when given params=.
        full = target.copy_merge_params(query) if query else target
        where = f"{self.method} {self._shown(full)} (page {page})"
        attempt = 0
        while True:
            await self._pacer.wait()
            retry_after: float | None = None
            try:
                response, content = await fetch(
                    client,
                    full,
                    self.method,
                    self.json,
                    self._headers,
                    max_redirects=self.max_redirects,
                    max_bytes=self.max_response_bytes,
                    where=where,
                    pipeline=pipeline,
                )
            except _RETRYABLE_ERRORS as exc:
                failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if attempt >= self.max_retries:
                    raise TransientError(f"{where}: {failure}, still failing after {attempt + 1} attempts") from exc
            except httpx.HTTPError as exc:
                # redirect loops, undecodable content: the same request would fail the same way
                raise TerminalError(f"{where}: {type(exc).__name__}: {exc}") from exc
            else:
                status = response.status_code
                if response.is_success:
                    return response, content
                failure = f"HTTP {status} {response.reason_phrase}"
                if not _retryable(status):
                    snippet = content[:_SNIPPET].decode(errors="replace").strip()
                    raise TerminalError(f"{where}: {failure}: {snippet!r}")
                if attempt >= self.max_retries:
                    raise TransientError(f"{where}: {failure}, still failing after {attempt + 1} attempts")
                retry_after = _retry_after(response.headers.get("Retry-After"))
                if retry_after is not None and retry_after > self.max_retry_after:
                    raise TransientError(
                        f"{where}: {failure} with Retry-After {retry_after:.0f}s, "
                        f"longer than max_retry_after={self.max_retry_after:g}s"
                    )
            delay = _delay(attempt, self.backoff, self.max_backoff, retry_after)
            _log.warning(
                "http request failed; retrying",
                request=where,
                failure=failure,
                attempt=attempt + 1,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)
            attempt += 1

    def _decode(self, response: httpx.Response, content: bytes, shown: str, page: int) -> Any:
        if response.status_code == 204:
            return None
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            snippet = content[:_SNIPPET].decode(errors="replace").strip()
            raise TerminalError(
                f"{self.method} {shown} (page {page}): the body is not JSON ({exc}): {snippet!r}"
            ) from exc

    def _items(self, body: Any, shown: str, page: int) -> list[Any]:
        """The list at `records_path`; a later page without it is the end (some APIs omit it when empty)."""
        items = _lookup(body, self._records_parts) if body is not None else None
        if items is _MISSING:
            if page > 1:
                return []
            raise TerminalError(
                f"{self.method} {shown} (page {page}): the body has no {self.records_path!r}; "
                f"top-level keys: {sorted(body)[:10] if isinstance(body, dict) else type(body).__name__}"
            )
        if items is None:
            return []
        if not isinstance(items, list):
            what = repr(self.records_path) if self.records_path else "the body"
            raise TerminalError(f"{self.method} {shown} (page {page}): {what} is a {type(items).__name__}, not a list")
        return items
