"""Pagination: the `Paginator` protocol, the `Page` it decides on, and the built-in schemes.

Page numbers, offsets, body cursors, `Link` headers and next URLs in the body. A paginator is stateless: it maps
the page just fetched to the next request (URL and complete query), or None after the last page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from jetl.errors import ConfigError, TerminalError
from jetl.extractors.http.paths import _MISSING, _lookup, _parse_path

ParamValue = str | int | float | bool


@dataclass(frozen=True)
class Page:
    """One fetched page, as a paginator sees it when it decides on the next request."""

    number: int
    """1 for the first page of the run."""
    url: str
    """The URL requested, without `params`."""
    params: dict[str, Any]
    """The query parameters sent (credentials excluded)."""
    response: httpx.Response
    body: Any
    """The decoded JSON body."""
    count: int
    """How many items the page held at `records_path`."""


@runtime_checkable
class Paginator(Protocol):
    """Decides the requests of a run: stateless, so one extractor can serve many runs."""

    def first(self) -> dict[str, ParamValue]:
        """Query parameters of the first request."""
        ...

    def next(self, page: Page) -> tuple[str, dict[str, Any]] | None:
        """URL and complete query parameters of the next request, or None after the last page."""
        ...

    def param_names(self) -> set[str]:
        """Query parameters this paginator owns (they may not also be set in `params`)."""
        ...


@dataclass(frozen=True)
class PageNumberPagination:
    """`?page=1`, `?page=2`, ... until a page holds no records."""

    param: str = "page"
    start: int = 1
    size_param: str | None = None
    """Parameter for the page size, sent with `size` on every request."""
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.param:
            raise ConfigError("HttpExtractor: PageNumberPagination needs a parameter name")
        if (self.size_param is None) != (self.size is None):
            raise ConfigError("HttpExtractor: PageNumberPagination needs both size_param and size, or neither")
        if self.size is not None and self.size < 1:
            raise ConfigError("HttpExtractor: PageNumberPagination size must be at least 1")

    def first(self) -> dict[str, ParamValue]:
        """The start page (and size)."""
        params: dict[str, ParamValue] = {self.param: self.start}
        if self.size_param is not None and self.size is not None:
            params[self.size_param] = self.size
        return params

    def next(self, page: Page) -> tuple[str, dict[str, Any]] | None:
        """The following page number; None after an empty page."""
        if page.count == 0:
            return None
        return page.url, {**page.params, self.param: int(page.params[self.param]) + 1}

    def param_names(self) -> set[str]:
        """Page and size parameters."""
        return {self.param} | ({self.size_param} if self.size_param else set())


@dataclass(frozen=True)
class OffsetPagination:
    """`?offset=0&limit=100`, then offset advanced by the records received, until a page holds none."""

    limit: int = 100
    offset_param: str = "offset"
    limit_param: str = "limit"
    start: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ConfigError("HttpExtractor: OffsetPagination limit must be at least 1")
        if not self.offset_param or not self.limit_param or self.offset_param == self.limit_param:
            raise ConfigError("HttpExtractor: OffsetPagination needs two distinct parameter names")
        if self.start < 0:
            raise ConfigError("HttpExtractor: OffsetPagination start must not be negative")

    def first(self) -> dict[str, ParamValue]:
        """Start offset and limit."""
        return {self.offset_param: self.start, self.limit_param: self.limit}

    def next(self, page: Page) -> tuple[str, dict[str, Any]] | None:
        """Offset advanced by what this page held (a server may cap the limit); None after an empty page."""
        if page.count == 0:
            return None
        return page.url, {**page.params, self.offset_param: int(page.params[self.offset_param]) + page.count}

    def param_names(self) -> set[str]:
        """Offset and limit parameters."""
        return {self.offset_param, self.limit_param}


@dataclass(frozen=True)
class CursorPagination:
    """A next-page token found at `path` in the body, sent back as `param`; stops when the token is absent."""

    path: str = "next_cursor"
    param: str = "cursor"

    def __post_init__(self) -> None:
        _parse_path(self.path, "cursor path")
        if not self.param:
            raise ConfigError("HttpExtractor: CursorPagination needs a parameter name")

    def first(self) -> dict[str, ParamValue]:
        """No token on the first request."""
        return {}

    def next(self, page: Page) -> tuple[str, dict[str, Any]] | None:
        """The token from the body; None when it is missing, null or empty."""
        token = _lookup(page.body, _parse_path(self.path, "cursor path"))
        if token is _MISSING or token is None or token == "":
            return None
        if not isinstance(token, (str, int, float)) or isinstance(token, bool):
            raise TerminalError(f"{page.url} page {page.number}: next token at {self.path!r} is not a string")
        if page.params.get(self.param) == token:
            raise TerminalError(f"{page.url} page {page.number}: the API returned the same next token twice")
        return page.url, {**page.params, self.param: token}

    def param_names(self) -> set[str]:
        """The token parameter."""
        return {self.param}


def _follow(page: Page, link: str, where: str) -> tuple[str, dict[str, Any]]:
    try:
        target = page.response.request.url.join(link)
    except httpx.InvalidURL as exc:
        raise TerminalError(f"{page.url} page {page.number}: {where} is not a URL: {exc}") from exc
    if target.scheme not in ("http", "https"):
        raise TerminalError(f"{page.url} page {page.number}: {where} is not an http(s) URL")
    if target == page.response.request.url:
        raise TerminalError(f"{page.url} page {page.number}: {where} points at the page itself")
    return str(target), {}


@dataclass(frozen=True)
class LinkHeaderPagination:
    """Follows the `Link: <...>; rel="next"` response header (RFC 8288), as GitHub's API does."""

    rel: str = "next"

    def first(self) -> dict[str, ParamValue]:
        """No parameters of its own."""
        return {}

    def next(self, page: Page) -> tuple[str, dict[str, Any]] | None:
        """The linked URL, complete with its own query; None when there is no such link."""
        link = page.response.links.get(self.rel, {}).get("url")
        return None if not link else _follow(page, link, f"the rel={self.rel!r} link")

    def param_names(self) -> set[str]:
        """None."""
        return set()


@dataclass(frozen=True)
class NextUrlPagination:
    """Follows a next-page URL found at `path` in the body (`{"next": "https://..."}`, Django REST style)."""

    path: str = "next"

    def __post_init__(self) -> None:
        _parse_path(self.path, "next URL path")

    def first(self) -> dict[str, ParamValue]:
        """No parameters of its own."""
        return {}

    def next(self, page: Page) -> tuple[str, dict[str, Any]] | None:
        """The URL from the body; None when it is missing, null or empty."""
        link = _lookup(page.body, _parse_path(self.path, "next URL path"))
        if link is _MISSING or link is None or link == "":
            return None
        if not isinstance(link, str):
            raise TerminalError(f"{page.url} page {page.number}: next URL at {self.path!r} is not a string")
        return _follow(page, link, f"the next URL at {self.path!r}")

    def param_names(self) -> set[str]:
        """None."""
        return set()


@dataclass(frozen=True)
class _NoPagination:
    def first(self) -> dict[str, ParamValue]:
        return {}

    def next(self, page: Page) -> tuple[str, dict[str, Any]] | None:
        return None

    def param_names(self) -> set[str]:
        return set()
