"""Clients and driver errors: one clickhouse-connect client per DSN per process, and its errors in jetl's terms.

A DSN is `chdb:///path` (the embedded engine, in-process) or an HTTP(S) server URL; settings add the user,
password and TLS for a server, never for chdb.

chdb limitation: the embedded engine can open one folder per process at a time. A second, different `chdb://` DSN
in the same process fails (`EmbeddedServer already initialized with path ...`) until `close_clients()` has closed
the first; this module keeps one client per DSN in `_CLIENTS` for that reason. Tests that use chdb share one folder
per test module (unique table names per test) and call `close_clients()` when done; another process reads the
folder with `jetl.testing.chdb.query`.

Driver errors map onto `jetl.errors` (`_wrap`): a statement ClickHouse refuses (type mismatch, syntax, unknown
column) is a TerminalError, anything else (connection, timeout, server busy) a DestinationUnavailable.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from jetl.errors import DestinationUnavailable, TerminalError
from jetl.redact import redact_text, redact_url, url_password
from jetl.settings import ClickHouseSettings

_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def get_client(dsn: str, settings: ClickHouseSettings | None = None) -> Any:
    """One clickhouse-connect client per DSN per process (a chdb folder may be opened by one process only)."""
    with _LOCK:
        if dsn not in _CLIENTS:
            import clickhouse_connect

            kwargs: dict[str, Any] = {"dsn": dsn}
            if settings and not dsn.startswith("chdb:"):
                if settings.user:
                    kwargs["username"] = settings.user
                if settings.password:
                    kwargs["password"] = settings.password.get_secret_value()
                kwargs["secure"] = settings.secure or dsn.startswith("https:")
                if settings.ca_file is not None:
                    kwargs["ca_cert"] = str(settings.ca_file)
            try:
                _CLIENTS[dsn] = clickhouse_connect.get_client(**kwargs)
            except Exception as exc:  # the DSN and the driver's text both may carry the password: shown redacted
                secrets = (url_password(dsn), settings.password if settings else None)
                raise DestinationUnavailable(
                    f"cannot open ClickHouse at {redact_url(dsn)}: {redact_text(str(exc), *secrets)}"
                ) from None
        return _CLIENTS[dsn]


def close_clients() -> None:
    """Close every cached client (a process that is done with chdb frees its folder)."""
    with _LOCK:
        for c in _CLIENTS.values():
            with contextlib.suppress(Exception):
                c.close()
        _CLIENTS.clear()


def _missing_table(exc: Exception) -> bool:
    return "UNKNOWN_TABLE" in str(exc) or "doesn't exist" in str(exc)


def _wrap(exc: Exception, doing: str) -> Exception:
    text = redact_text(str(exc))
    terminal_markers = (
        "TYPE_MISMATCH",
        "CANNOT_PARSE",
        "ILLEGAL_TYPE",
        "UNKNOWN_IDENTIFIER",
        "SYNTAX_ERROR",
        "NO_SUCH_COLUMN",
        "Code: 53",
        "Code: 27",
        "Code: 62",
        "Code: 47",
        "TypeError",
        "ValueError",
    )
    if isinstance(exc, (TypeError, ValueError)) or any(m in text for m in terminal_markers):
        return TerminalError(f"ClickHouse rejected {doing}: {text[:500]}")
    return DestinationUnavailable(f"ClickHouse failed {doing}: {text[:500]}")
