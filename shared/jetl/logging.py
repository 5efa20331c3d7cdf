"""structlog set-up: JSON in production, console for people; every line bound to service, pipeline, run, batch."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, clear_contextvars

from jetl.redact import redact_text

__all__ = ["bind_contextvars", "bound_contextvars", "clear_contextvars", "configure_logging", "get_logger"]

_SINKS: list[Any] = []


def add_sink(sink: Any) -> None:
    """Also hand every rendered event dict to `sink(event_dict)` (log shipping uses this)."""
    _SINKS.append(sink)


def remove_sink(sink: Any) -> None:
    """Stop handing events to `sink` (a service that stops takes its log shipper with it)."""
    with contextlib.suppress(ValueError):
        _SINKS.remove(sink)


def _ship(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for sink in _SINKS:
        with contextlib.suppress(Exception):  # a log sink must never break the caller
            sink(dict(event_dict))
    return event_dict


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask URL passwords and secret-looking query values in every string of a log line, tracebacks included.

    The last line of defence: code shows URLs through `jetl.redact` already; this catches a driver's error text
    or a traceback that quotes one, before the line is printed or shipped to JETL_LOGS.
    """
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
    return event_dict


HOST = socket.gethostname()
"""The host every line of this process says it came from (`jetl logs` shows it: lines of one run come from several
hosts)."""

_HANDLER = "jetl"
LIBRARY_LOGGERS = ("faststream", "nats", "asyncio")
"""Libraries that log through the standard library with handlers of their own (FastStream's colour one): their
lines go through jetl's renderer instead, so a JSON log file holds JSON lines only and no file holds ANSI codes."""


class _Stderr:
    """The process's standard error as it is when a line is written, not when logging was configured: a test
    harness (or a daemon that redirects its streams) may swap `sys.stderr`, and a line must follow it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler over the current `sys.stderr` (see `_Stderr`)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(service: str, level: str = "INFO", fmt: str = "console") -> None:
    """Configure structlog once per process, route the standard library's loggers (FastStream, nats-py) through the
    same renderer, and bind the service name and host."""
    # Colours only on a terminal: a service under `jetl up` writes to a log file, which must stay plain text.
    colors = sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=colors)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, _ship, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.set_name(_HANDLER)
    root = logging.getLogger()  # others' handlers stay (pytest's capture); an earlier call's own is replaced
    root.handlers = [h for h in root.handlers if h.get_name() != _HANDLER] + [handler]
    root.setLevel(threshold)
    # FastStream gives its loggers their handlers when it is imported: import it first (a service does anyway;
    # `jetl.bus` imports it only when a broker is made, so that a CLI command that reads never pays for it)
    import faststream  # noqa: F401

    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True
    # httpx logs full URLs at INFO, query-string API keys included: keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    clear_contextvars()
    bind_contextvars(service=service, host=HOST)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger."""
    return structlog.get_logger(name)
