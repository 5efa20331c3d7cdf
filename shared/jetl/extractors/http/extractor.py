"""`HttpExtractor`: one run pages through a JSON API, turning each page into records, origins and a cursor.

It owns the request loop: auth applied per origin, pagination (`paginate`), the incremental high-water mark
(`incremental`), redirects (`redirects`), retries and pacing (`retry`), and decoding the body into records. Errors
it raises are listed in the package docstring (`jetl.extractors.http`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson
from pydantic import SecretStr

from jetl.errors import ConfigError, JetlError, TerminalError, TransientError
from jetl.extractors.http.auth import Auth
from jetl.extractors.http.body import ACCEPT_ENCODING
from jetl.extractors.http.incremental import _Filter, _param, cursor_at, start_of
from jetl.extractors.http.limits import Limits
from jetl.extractors.http.paginate import Page, Paginator, ParamValue, _NoPagination
from jetl.extractors.http.paths import _MISSING, _lookup, _parse_path
from jetl.extractors.http.redirects import fetch, headers_for
from jetl.extractors.http.retry import _RETRYABLE_ERRORS, Retry, _delay, _Pacer, _retry_after, _retryable
from jetl.extractors.incremental import Incremental
from jetl.logging import get_logger
from jetl.positions import order_key
from jetl.protocols import Check, Chunk, ExtractContext, Partition, Record
from jetl.redact import Secrets

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
            incremental=Incremental("updated_at", param="updated_since"),
            retry=Retry(max_retries=3),
            limits=Limits(requests_per_second=10, request_deadline=60),
        )

    Options come in groups, as httpx groups `Timeout` and `Limits`: `retry=Retry(...)` (how failed requests are
    retried) and `limits=Limits(...)` (pages, redirects, bytes, rate, deadlines). Secret values (`auth`, and any
    `SecretStr` in `params` or `headers`) go only to the configured origin and are masked in every error and log
    line, an API's error body that echoes one included.

    With `partition_window` (and `interval_start_param` / `interval_end_param`, which the API filters on), a run's data
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
        params: Mapping[str, ParamValue | SecretStr] | None = None,
        json: Any = None,
        headers: Mapping[str, str | SecretStr] | None = None,
        records_path: str | None = None,
        paginate: Paginator | None = None,
        auth: Auth | None = None,
        incremental: Incremental | None = None,
        interval_start_param: str | None = None,
        interval_end_param: str | None = None,
        partition_window: timedelta | None = None,
        timeout: float | httpx.Timeout = 30.0,
        verify: bool | str | ssl.SSLContext = True,
        retry: Retry | None = None,
        limits: Limits | None = None,
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
        for name, value, kind, what in (
            ("paginate", paginate, Paginator, "a Paginator"),
            ("auth", auth, Auth, "an Auth (BearerAuth, BasicAuth, ApiKeyAuth)"),
            ("incremental", incremental, Incremental, "an Incremental"),
            ("retry", retry, Retry, "a Retry"),
            ("limits", limits, Limits, "a Limits"),
        ):
            if value is not None and not isinstance(value, kind):
                raise ConfigError(f"HttpExtractor: {name}={value!r} is not {what}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"HttpExtractor: chunk_size must be an integer of at least 1, not {chunk_size!r}")
        if not isinstance(timeout, httpx.Timeout) and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"HttpExtractor: timeout must be a number of seconds > 0, not {timeout!r}")
        if incremental is not None and not incremental.param:
            raise ConfigError(
                "HttpExtractor: its Incremental needs param=, the query parameter the API takes the cursor value in"
            )
        if partition_window is not None:
            if not isinstance(partition_window, timedelta) or partition_window <= timedelta(0):
                raise ConfigError(
                    f"HttpExtractor: partition_window must be a positive timedelta, not {partition_window!r}"
                )
            if not (interval_start_param and interval_end_param):
                raise ConfigError(
                    "HttpExtractor: partition_window= needs interval_start_param= and interval_end_param=, the query "
                    "parameters the API takes a window's start and end in"
                )
            if incremental is not None:
                raise ConfigError(
                    "HttpExtractor: partition_window= and incremental= cannot go together: the run's cursor (the "
                    "furthest record) is not known until every window is read, and a split run's cursor must be known "
                    "before"
                )

        self.url = str(base.copy_with(query=None, fragment=None))  # its query moves into self.params
        self.method: Method = "GET" if upper == "GET" else "POST"
        given = {**dict(base.params), **dict(params or {})}
        self.params: dict[str, ParamValue] = {k: v for k, v in given.items() if not isinstance(v, SecretStr)}
        self._secret_query = {k: v for k, v in given.items() if isinstance(v, SecretStr)}
        self.json = json
        self.headers: dict[str, str] = {k: v for k, v in (headers or {}).items() if not isinstance(v, SecretStr)}
        self._secret_headers = {k: v for k, v in (headers or {}).items() if isinstance(v, SecretStr)}
        self.records_path = records_path
        self._records_parts = () if records_path is None else _parse_path(records_path, "records_path")
        self.paginate: Paginator = paginate or _NoPagination()
        self.auth = auth
        self.incremental = incremental
        self._field_parts = () if incremental is None else _parse_path(incremental.field, "incremental field")
        tie = None if incremental is None else incremental.tie_breaker
        self._key_parts = () if tie is None else _parse_path(tie, "incremental tie_breaker")
        self.interval_params = {"start": interval_start_param, "end": interval_end_param}
        self.partition_window = partition_window
        self.timeout = timeout
        self.retry = retry or Retry()
        self.limits = limits or Limits()
        self.chunk_size = chunk_size
        self._verify = self._tls(verify)
        self._transport = None if transport is None else _Borrowed(transport)
        self._pacer = _Pacer(self.limits.requests_per_second)
        self._origin = (base.scheme, base.host, base.port)
        self._secret_params = set(self._secret_query) | (set(auth.query()) if auth else set())
        self._secrets = Secrets(self._secret_values())
        self._cursor: dict[str, Any] | None = None
        self._check_names()

    def _secret_values(self) -> list[str | SecretStr]:
        """Every secret the extractor puts on the wire, as sent and as given: what `Secrets` masks."""
        values: list[str | SecretStr] = [*self._secret_query.values(), *self._secret_headers.values()]
        if self.auth is not None:
            values += [v for v in getattr(self.auth, "__dict__", {}).values() if isinstance(v, SecretStr)]
            for value in [*self.auth.headers().values(), *self.auth.query().values()]:
                values += [value, value.partition(" ")[2]]  # "Bearer <token>": the token alone as well
        return values

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

        claim([*self.params, *self._secret_query], "params")
        claim(self.paginate.param_names(), type(self.paginate).__name__)
        if self.incremental is not None:
            claim([str(self.incremental.param)], "incremental")
        claim([p for p in self.interval_params.values() if p], "the interval parameters")
        if self.auth is not None:
            claim(sorted(self.auth.query()), "auth")
            taken = {h.lower() for h in [*self.headers, *self._secret_headers]}
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
            return cursor_at(self.incremental, value, key if self.incremental.tie_breaker else None)
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
        """With `partition_window`, the run's data interval in windows (see the class docstring); None without one or a
        data interval (the run is read whole)."""
        start, end = ctx.data_interval_start, ctx.data_interval_end
        if self.partition_window is None or start is None or end is None:
            return None
        out: list[Partition] = []
        while start < end:
            stop = min(start + self.partition_window, end)
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
        incremental run keeps only the records after the stored position. An error's text never quotes a secret
        the extractor was given (an API may echo the token it refused): see `jetl.redact.Secrets`."""
        try:
            async for chunk in self._pages(ctx):
                yield chunk
        except JetlError as exc:
            if not self._quotes_secret(exc):
                raise
            raise self._masked(exc) from None  # its cause may quote the secret too

    def _quotes_secret(self, exc: BaseException) -> bool:
        seen: BaseException | None = exc
        while seen is not None:
            if self._secrets.found_in(str(seen)):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    def _masked(self, exc: JetlError) -> JetlError:
        """`exc` of the same kind, its text masked."""
        try:
            return type(exc)(self._secrets.mask(str(exc)))
        except TypeError:  # a subclass with its own constructor
            return TerminalError(self._secrets.mask(str(exc)))

    async def _pages(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        start, inclusive = self._start(ctx)
        keep: _Filter | None = None
        if self.incremental is not None:
            keep = _Filter(self.incremental, self._field_parts, self._key_parts, start, inclusive)
            self._cursor = keep.cursor
        params = self._first_params(ctx, None if start is None else start[0])
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
                if number > self.limits.page_limit:
                    raise TerminalError(
                        f"pipeline {ctx.pipeline!r}: {self.method} {self._shown(httpx.URL(url))}: more than "
                        f"page_limit={self.limits.page_limit} pages; raise Limits(page_limit=...), or set "
                        "Limits(max_pages=...) to stop there"
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
                if self.limits.max_pages is not None and number >= self.limits.max_pages:
                    break
                page = Page(number, url, page_params, response, body, len(items))
                following = self.paginate.next(page)
                if following is None:
                    break
                url, page_params = following
            if records or rejected:
                yield self._chunk(records, origins, rejected, number, shown, len(items))
        if keep is not None and keep.skipped:
            _log.info("records at or before the cursor skipped", skipped=keep.skipped, cursor=self._cursor)

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
        return start_of(self.incremental, ctx.cursor, repr(self))

    def _first_params(self, ctx: ExtractContext, start: Any) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.params)
        if self.incremental is not None and start is not None:
            params[str(self.incremental.param)] = _param(start)
        for end, value in (("start", ctx.data_interval_start), ("end", ctx.data_interval_end)):
            name = self.interval_params[end]
            if name and value is not None:
                params[name] = _param(value)
        params.update(self.paginate.first())
        return params

    # -- one request ------------------------------------------------------------------------------

    def _shown(self, url: httpx.URL) -> str:
        """The URL as it may appear in logs, origins and errors: credentials in the query removed, and a secret
        elsewhere in it masked (a next link may carry the key under another name)."""
        for name in self._secret_params:
            url = url.copy_remove_param(name)
        return self._secrets.hide(str(url))

    def _same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == self._origin

    def _headers(self, url: httpx.URL) -> dict[str, str]:
        """The headers a request to `url` carries (see `redirects.headers_for`)."""
        secret = {k: v.get_secret_value() for k, v in self._secret_headers.items()}
        auth = {**secret, **(self.auth.headers() if self.auth is not None else {})}
        return {"Accept-Encoding": ACCEPT_ENCODING, **headers_for(url, self._same_origin(url), self.headers, auth)}

    def _query(self, same_origin: bool) -> dict[str, str]:
        """The credentials that travel in the query string, for the configured origin only."""
        if not same_origin:
            return {}
        secret = {k: v.get_secret_value() for k, v in self._secret_query.items()}
        return {**secret, **(self.auth.query() if self.auth is not None else {})}

    async def _send(
        self, client: httpx.AsyncClient, url: str, params: dict[str, Any], page: int, pipeline: str = ""
    ) -> tuple[httpx.Response, bytes]:
        """One page, retried as `retry` says, within `limits.page_deadline` (and each attempt within
        `limits.request_deadline`)."""
        target = httpx.URL(url)
        query = {**params, **self._query(self._same_origin(target))}
        # Merge into the URL ourselves: httpx 0.28 drops a URL's own query (a next link's) when given params=.
        full = target.copy_merge_params(query) if query else target
        where = f"{self.method} {self._shown(full)} (page {page})"
        deadline = self.limits.page_deadline
        try:
            async with asyncio.timeout(deadline):
                return await self._attempts(client, full, where, pipeline)
        except TimeoutError:
            raise TransientError(
                f"pipeline {pipeline!r}: {where}: not fetched within Limits(page_deadline={deadline:g}) seconds, "
                "retries included; the run is handed back to be retried later"
            ) from None

    async def _attempts(
        self, client: httpx.AsyncClient, full: httpx.URL, where: str, pipeline: str
    ) -> tuple[httpx.Response, bytes]:
        retry, limits = self.retry, self.limits
        attempt = 0
        while True:
            await self._pacer.wait()
            retry_after: float | None = None
            try:
                async with asyncio.timeout(limits.request_deadline):
                    response, content = await fetch(
                        client,
                        full,
                        self.method,
                        self.json,
                        self._headers,
                        max_redirects=limits.max_redirects,
                        max_bytes=limits.max_response_bytes,
                        where=where,
                        pipeline=pipeline,
                    )
            except TimeoutError:
                # a server trickling its answer: asking again would hold the extractor as long again
                raise TransientError(
                    f"pipeline {pipeline!r}: {where}: no complete response within "
                    f"Limits(request_deadline={limits.request_deadline:g}) seconds (the server answers too slowly); "
                    "the run is handed back to be retried later"
                ) from None
            except _RETRYABLE_ERRORS as exc:
                failure = self._secrets.mask(f"{type(exc).__name__}: {exc}".rstrip(": "))
                if attempt >= retry.max_retries:
                    raise TransientError(f"{where}: {failure}, still failing after {attempt + 1} attempts") from None
            except httpx.HTTPError as exc:
                # redirect loops, undecodable content: the same request would fail the same way
                raise TerminalError(self._secrets.mask(f"{where}: {type(exc).__name__}: {exc}")) from None
            else:
                status = response.status_code
                if response.is_success:
                    return response, content
                failure = f"HTTP {status} {response.reason_phrase}"
                if not _retryable(status):
                    snippet = self._snippet(content)
                    raise TerminalError(f"{where}: {failure}: {snippet!r}")
                if attempt >= retry.max_retries:
                    raise TransientError(f"{where}: {failure}, still failing after {attempt + 1} attempts")
                retry_after = _retry_after(response.headers.get("Retry-After"))
                if retry_after is not None and retry_after > retry.max_retry_after:
                    raise TransientError(
                        f"{where}: {failure} with Retry-After {retry_after:.0f}s, "
                        f"longer than max_retry_after={retry.max_retry_after:g}s"
                    )
            delay = _delay(attempt, retry.backoff, retry.max_backoff, retry_after)
            _log.warning(
                "http request failed; retrying",
                request=where,
                failure=failure,
                attempt=attempt + 1,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)
            attempt += 1

    def _snippet(self, content: bytes) -> str:
        """The start of a body for an error message, secrets masked before it is cut (a cut secret is not found)."""
        text = content[: _SNIPPET * 4 + 1024].decode(errors="replace")
        return self._secrets.mask(text)[:_SNIPPET].strip()

    def _decode(self, response: httpx.Response, content: bytes, shown: str, page: int) -> Any:
        if response.status_code == 204:
            return None
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            snippet = self._snippet(content)
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
