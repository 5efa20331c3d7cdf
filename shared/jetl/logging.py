"""structlog set-up: JSON in production, console for people; every line bound to service, pipeline, run, batch."""

from __future__ import annotations

import contextlib
import logging
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


def configure_logging(service: str, level: str = "INFO", fmt: str = "console") -> None:
    """Configure structlog once per process and bind the service name."""
    # Colours only on a terminal: a service under `jetl up` writes to a log file, which must stay plain text.
    colors = sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=colors)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            _ship,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level.upper(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # httpx logs full URLs at INFO, query-string API keys included: keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    clear_contextvars()
    bind_contextvars(service=service)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger."""
    return structlog.get_logger(name)
