"""The one redaction rule: a URL or DSN is shown with its password (and any secret-looking query value) masked,
and every secret value a connector was given is masked wherever its text appears.

Every place that shows a connection string (events, log lines, error texts, dead-letter reasons, `--json` output,
metrics labels) goes through `redact_url`, and text that may quote one (a driver's error message, an API's error
body) through `redact_text`. Secrets themselves travel as `SecretStr`, which never prints its value; a connector
hands the values it reveals to the wire to `Secrets`, which masks them in its own errors and enters them in the
process's list that `redact_text` (and so every log line, `jetl.logging`) always masks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from pydantic import SecretStr

MASK = "***"
_SECRET_PARAMS = re.compile(r"(pass|pwd|secret|token|key|auth|credential|signature|sig)", re.IGNORECASE)
# scheme://user:password@host in free text (an error message that quotes a URL)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z_]*(?:pass|pwd|secret|token|key|auth|credential)[A-Za-z_]*))=(?P<val>[^&;\s]+)",
    re.IGNORECASE,
)


def _secret_text(value: Any) -> str:
    """A `SecretStr`'s value (anything with its `get_secret_value`), else `value` as text: told apart without
    importing pydantic, which the commands that only read (`jetl status`) do without."""
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal()) if callable(reveal) else str(value)


def redact_url(url: str | SecretStr | None) -> str:
    """`url` with the password of its user info and secret-looking query values replaced by `***`.

    Text that does not parse as a URL is masked whole after its scheme, so a malformed DSN is never echoed.
    """
    if url is None:
        return ""
    text = _secret_text(url)
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a malformed port: the text is not a URL we can show safely in parts
    except ValueError:
        scheme, sep, _rest = text.partition("://")
        return f"{scheme}://{MASK}" if sep else MASK
    netloc = parts.netloc
    if ":" not in netloc.rpartition("@")[0] and not _SECRET_PARAMS.search(parts.query):
        return text  # nothing secret in it: shown exactly as given
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, *secrets: str | SecretStr | None) -> str:
    """`text` with every URL password, secret-looking query value, each of `secrets` and every value a connector
    entered in `Secrets` masked."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    out = _QUERY_SECRET.sub(lambda m: f"{m['key']}={MASK}", out)
    return _mask(out, [*_forms(secrets), *_KNOWN])


_KNOWN: list[str] = []
"""Secret values (and their quoted forms) connectors of this process reveal on the wire, longest first."""
_GLOBAL_MIN = 4
"""Values shorter than this are masked in their connector's errors only: in every log line they would mask
ordinary words."""


def _forms(values: Iterable[str | SecretStr | None]) -> list[str]:
    """Each value as it may be quoted back: as is, URL-encoded, JSON-escaped."""
    out: set[str] = set()
    for secret in values:
        value = secret if secret is None or isinstance(secret, str) else _secret_text(secret)
        if value:
            out.update((value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]))
    return sorted(out, key=len, reverse=True)


def _mask(text: str, forms: list[str]) -> str:
    for form in forms:  # longest first: "Bearer abc" before "abc"
        if form in text:
            text = text.replace(form, MASK)
    return text


class Secrets:
    """The secret values one connector was given (tokens, passwords, API keys, `SecretStr` parameters), masked
    wherever their text appears: `mask` for its own texts (an API's error body echoing a token), and, entered in
    the process's list, in every `redact_text` and so every log line.

    Example:
        secrets = Secrets([token]); raise TerminalError(secrets.mask(f"HTTP 401: {body}"))
    """

    def __init__(self, values: Iterable[str | SecretStr | None]) -> None:
        self.forms = _forms(values)
        for form in self.forms:
            if len(form) >= _GLOBAL_MIN and form not in _KNOWN:
                _KNOWN.append(form)
        _KNOWN.sort(key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.forms)

    def mask(self, text: str) -> str:
        """`text` with each secret masked (and URL passwords and secret-looking query values: `redact_text`)."""
        return redact_text(self.hide(text))

    def hide(self, text: str) -> str:
        """`text` with each secret masked, and nothing else (a URL shown as a record's origin keeps its
        `page_token=`)."""
        return _mask(text, self.forms)

    def found_in(self, text: str) -> bool:
        """Whether `text` quotes one of the secrets."""
        return any(form in text for form in self.forms)


def url_password(url: str | SecretStr | None) -> str | None:
    """The password in a URL's user info (None when it has none, or the text is not a URL): what `redact_text`
    must also mask where a driver quotes it without the URL around it."""
    if url is None:
        return None
    text = _secret_text(url)
    try:
        return urlsplit(text).password or None
    except ValueError:
        return None
