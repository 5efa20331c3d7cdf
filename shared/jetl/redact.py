"""The one redaction rule: a URL or DSN is shown with its password (and any secret-looking query value) masked.

Every place that shows a connection string (events, log lines, error texts, dead-letter reasons, `--json` output,
metrics labels) goes through `redact_url`, and text that may quote one (a driver's error message) through
`redact_text`. Secrets themselves travel as `SecretStr`, which never prints its value.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

MASK = "***"
_SECRET_PARAMS = re.compile(r"(pass|pwd|secret|token|key|auth|credential|signature|sig)", re.IGNORECASE)
# scheme://user:password@host in free text (an error message that quotes a URL)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z_]*(?:pass|pwd|secret|token|key|auth|credential)[A-Za-z_]*))=(?P<val>[^&;\s]+)",
    re.IGNORECASE,
)


def redact_url(url: str | SecretStr | None) -> str:
    """`url` with the password of its user info and secret-looking query values replaced by `***`.

    Text that does not parse as a URL is masked whole after its scheme, so a malformed DSN is never echoed.
    """
    if url is None:
        return ""
    text = url.get_secret_value() if isinstance(url, SecretStr) else str(url)
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
    """`text` with every URL password, secret-looking query value and each of `secrets` masked."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    out = _QUERY_SECRET.sub(lambda m: f"{m['key']}={MASK}", out)
    for secret in secrets:
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if value:
            out = out.replace(value, MASK)
    return out


def url_password(url: str | SecretStr | None) -> str | None:
    """The password in a URL's user info (None when it has none, or the text is not a URL): what `redact_text`
    must also mask where a driver quotes it without the URL around it."""
    if url is None:
        return None
    text = url.get_secret_value() if isinstance(url, SecretStr) else str(url)
    try:
        return urlsplit(text).password or None
    except ValueError:
        return None
