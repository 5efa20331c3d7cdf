"""One request and the redirects it leads to, followed by jetl rather than httpx: httpx keeps every header but
Authorization on a redirect to another host, so an API-key header would go wherever the server points. Here
credentials (auth, and `headers=` names that look like one) go only to the configured origin, and the body is read
up to a byte limit (`body`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from jetl.errors import TerminalError
from jetl.extractors.http.body import read_body

_SECRET_HEADER = re.compile(r"auth|token|key|secret|pass|cookie|session|credential|signature", re.IGNORECASE)
"""A `headers=` name that looks like it carries a credential: never sent to another origin on a redirect."""


def headers_for(
    url: httpx.URL, same_origin: bool, headers: Mapping[str, str], auth: Mapping[str, str]
) -> dict[str, str]:
    """The headers a request to `url` carries: credentials (`auth`, and `headers` that look like one) only for
    the configured origin."""
    if same_origin:
        return {**headers, **auth}
    return {k: v for k, v in headers.items() if not _SECRET_HEADER.search(k)}


async def fetch(
    client: httpx.AsyncClient,
    url: httpx.URL,
    method: str,
    payload: Any,
    headers: Callable[[httpx.URL], dict[str, str]],
    *,
    max_redirects: int,
    max_bytes: int,
    where: str,
    pipeline: str,
) -> tuple[httpx.Response, bytes]:
    """One request and the redirects it leads to, each with `headers(url)`, with its body read up to
    `max_bytes`."""
    for hop in range(max_redirects + 1):
        request = client.build_request(method, url, json=payload, headers=headers(url))
        response = await client.send(request, stream=True)
        try:
            if not response.is_redirect:
                return response, await read_body(response, max_bytes, where, pipeline)
        finally:
            await response.aclose()
        if hop == max_redirects:
            break
        url = response.url.join(response.headers["Location"])
        if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
            method, payload = "GET", None  # as browsers and httpx do: the body is not sent on
    raise TerminalError(f"pipeline {pipeline!r}: {where}: more than max_redirects={max_redirects} redirects")
