"""HTTP extractor: JSON APIs over httpx; paginated, authenticated, rate-limited, retried, incremental.

Modules: `auth` (credentials), `paginate` (which request comes next), `incremental` (high-water marks), `retry`
(backoff, Retry-After, pacing), `paths` (dotted paths into a body) and `extractor` (`HttpExtractor`, the request
loop). The public names are re-exported here; import them from `jetl.extractors.http`.

Errors at this edge, mapped onto jetl's taxonomy (`jetl.errors`):

    httpx.TimeoutException, NetworkError,           retried with exponential backoff and jitter, honouring
    RemoteProtocolError, ProxyError; HTTP 408,      Retry-After; after `max_retries` retries -> TransientError
    429 and 5xx                                     (naming method, url and status)
    Retry-After longer than `max_retry_after`       -> TransientError at once: the bus waits, not this task
    any other 4xx, a 3xx left after redirects       -> TerminalError (method, url, status, start of the body)
    a body that is not JSON, or no list of records  -> TerminalError (url and page number)
    a pagination loop (the same next token twice)   -> TerminalError
    bad constructor arguments                       -> ConfigError, raised at construction

Credentials are `SecretStr`s: they never appear in a repr, a log line, an origin or an error message. The extractor
adds them only to requests for the origin (scheme, host, port) of the configured `url`, never to a request for
another host a next link points at. Redirects are followed (httpx `follow_redirects=True`) with the request's
headers, except that httpx drops `Authorization` when a redirect leaves the origin (an http -> https upgrade of the
same host keeps it). So `BearerAuth` and `BasicAuth` stay with the origin, but an `ApiKeyAuth` header (and any
`headers=` given) goes along to whatever host a redirect from the origin names. A key in the query string does not:
the redirected request's URL is the `Location` the server sent.
"""

from jetl.extractors.http.auth import ApiKeyAuth, Auth, BasicAuth, BearerAuth
from jetl.extractors.http.extractor import HttpExtractor
from jetl.extractors.http.incremental import Incremental
from jetl.extractors.http.paginate import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    OffsetPagination,
    Page,
    PageNumberPagination,
    Paginator,
)

__all__ = [
    "ApiKeyAuth",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "CursorPagination",
    "HttpExtractor",
    "Incremental",
    "LinkHeaderPagination",
    "NextUrlPagination",
    "OffsetPagination",
    "Page",
    "PageNumberPagination",
    "Paginator",
]
