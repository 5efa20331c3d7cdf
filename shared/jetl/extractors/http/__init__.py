"""HTTP extractor: JSON APIs over httpx; paginated, authenticated, rate-limited, retried, incremental.

Modules: `auth` (credentials), `paginate` (which request comes next), `incremental` (high-water marks and the
records after them), `redirects` (one request and its redirects, credentials kept to their origin), `body` (a body
decoded within the byte limit), `retry` (`Retry`: backoff, Retry-After, pacing), `limits` (`Limits`: pages,
bytes, rate, deadlines), `paths` (dotted paths into a body) and `extractor` (`HttpExtractor`, the request loop).
The public names are re-exported here; import them from `jetl.extractors.http`.

Errors at this edge, mapped onto jetl's taxonomy (`jetl.errors`):

    httpx.TimeoutException, NetworkError,           retried with exponential backoff and jitter, honouring
    RemoteProtocolError, ProxyError; HTTP 408,      Retry-After; after `Retry.max_retries` retries -> TransientError
    429 and 5xx                                     (naming method, url and status)
    Retry-After longer than `Retry.max_retry_after` -> TransientError at once: the bus waits, not this task
    no whole response within `request_deadline`,    -> TransientError at once, naming the deadline: a server
    a page past `page_deadline` (retries included)     trickling bytes does not hold the extractor
    any other 4xx, a 3xx left after redirects       -> TerminalError (method, url, status, start of the body)
    a body that is not JSON, or no list of records  -> TerminalError (url and page number)
    a pagination loop (the same next token twice)   -> TerminalError
    more than `max_redirects` redirects, a body     -> TerminalError naming the pipeline and the URL
    over `max_response_bytes` (decoded), more than
    `page_limit` pages, an encoding not advertised
    bad constructor arguments                       -> ConfigError, raised at construction

Credentials are `SecretStr`s (auth, and any `SecretStr` value in `params` or `headers`): they never appear in a repr,
a log line, an origin or an error message, not even where an API's error body echoes one (`jetl.redact.Secrets`
masks them). The extractor
adds them only to requests for the origin (scheme, host, port) of the configured `url`, never to a request for
another host a next link points at. It follows redirects itself (up to `max_redirects`, default 10) under the same
rule: a redirect to another origin carries neither the auth headers (bearer, basic, an `ApiKeyAuth` header) nor any
`headers=` entry whose name looks like a credential (`auth`, `token`, `key`, `secret`, `cookie`, ...); a key in the
query string does not go along either (the redirected request's URL is the `Location` the server sent). The limits
are `Limits(...)`: bodies are read as a stream, decoded by jetl a piece at a time (gzip, deflate and zstd are the
encodings it asks for) and refused past `max_response_bytes` decoded bytes (default 64 MiB); a request must be
answered whole within `request_deadline` (default 120 s) and a page fetched, retries included, within
`page_deadline` (600 s); a run stops with an error past `page_limit` pages (default 100 000); `max_pages` is
different: a cap you choose, where the run stops quietly.
"""

from jetl.extractors.http.auth import ApiKeyAuth, Auth, BasicAuth, BearerAuth
from jetl.extractors.http.extractor import HttpExtractor
from jetl.extractors.http.limits import Limits
from jetl.extractors.http.paginate import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    OffsetPagination,
    Page,
    PageNumberPagination,
    Paginator,
)
from jetl.extractors.http.retry import Retry
from jetl.extractors.incremental import Incremental

__all__ = [
    "ApiKeyAuth",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "CursorPagination",
    "HttpExtractor",
    "Incremental",
    "Limits",
    "LinkHeaderPagination",
    "NextUrlPagination",
    "OffsetPagination",
    "Page",
    "PageNumberPagination",
    "Paginator",
    "Retry",
]
