"""Prometheus metrics of one service process, served at `http://<host>:<metrics_port>/metrics`.

Off unless `JETL_METRICS_PORT` is set (then one HTTP server per process). What is exported:

| metric                                   | kind      | labels                 | from                            |
|------------------------------------------|-----------|------------------------|---------------------------------|
| `jetl_<counter>_total`                   | counter   | service                | `ServiceContext.count`          |
| `jetl_messages_settled_total`            | counter   | service, outcome       | ack / nak / term of each input  |
| `jetl_errors_total`                      | counter   | service, disposition   | transient / terminal failures   |
| `jetl_consumer_pending`                  | gauge     | consumer               | num_pending of the durable (lag)|
| `jetl_consumer_ack_pending`              | gauge     | consumer               | delivered, not yet acked        |
| `jetl_schedule_requests_total`           | counter   | pipeline, result       | scheduler: new / duplicate slot |
| `jetl_alerts_total`                      | counter   | kind, result           | scheduler: webhook alerts       |
| `faststream_*`                           | various   | app_name, handler, ... | FastStream's middleware         |

Labels are bounded: by service, pipeline and kind, never by run. FastStream's middleware would label each message
by its subject (`jetl.raw.<pipeline>.<run>`: a new series per run); here it gets the subject cut down to kind and
pipeline (`jetl.subjects.metric_label`).

`jetl_messages_settled_total` counts ack decisions (`jetl.runtime.stage.decide_ack`); it keeps the name it was
published under, so dashboards built on it keep working. In the code, "settled" is a run's ledger only.

`ServiceContext.count` counters are batches and records per stage (`jetl_records_loaded_total`, ...); FastStream's
middleware adds messages received, processing duration, exceptions and publishes.

Every call here is a no-op until `enable()` ran, so the hot path pays nothing when metrics are off.
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from jetl import subjects

_LOCK = threading.Lock()
_state: dict[str, Any] = {"enabled": False, "service": "", "server": None, "middleware": None}
REGISTRY = CollectorRegistry(auto_describe=True)
_COUNTERS: dict[str, Counter] = {}
_NAME = re.compile(r"[^a-zA-Z0-9_]")

ACK_DECISIONS = Counter(
    "jetl_messages_settled", "Ack decisions on input messages, by outcome", ["service", "outcome"], registry=REGISTRY
)
ERRORS = Counter(
    "jetl_errors", "Failures while handling a message, by disposition", ["service", "disposition"], registry=REGISTRY
)
PENDING = Gauge(
    "jetl_consumer_pending", "Messages not yet delivered to the durable consumer (lag)", ["consumer"], registry=REGISTRY
)
ACK_PENDING = Gauge(
    "jetl_consumer_ack_pending", "Messages delivered but not yet acknowledged", ["consumer"], registry=REGISTRY
)
SCHEDULE = Counter(
    "jetl_schedule_requests",
    "Schedule slots requested: new, or already requested by a replica",
    ["pipeline", "result"],
    registry=REGISTRY,
)
ALERTS = Counter("jetl_alerts", "Webhook alerts sent or given up", ["kind", "result"], registry=REGISTRY)


def enabled() -> bool:
    """Whether this process exports metrics."""
    return bool(_state["enabled"])


def enable(service: str, port: int, host: str = "127.0.0.1") -> int:
    """Start the /metrics HTTP server once per process; returns the port it listens on."""
    with _LOCK:
        if _state["server"] is None:
            from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                with contextlib.suppress(ValueError):  # already registered
                    REGISTRY.register(collector)
            server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
            _state["server"] = server
        _state["enabled"], _state["service"] = True, service
        return int(_state["server"].server_address[1])


def middleware(service: str) -> Any:
    """FastStream's NATS Prometheus middleware on this registry (one per process: it registers its metrics), with
    subjects labelled by kind and pipeline only (`jetl.subjects.metric_label`)."""
    with _LOCK:
        if _state["middleware"] is None:
            from faststream.prometheus.middleware import PrometheusMiddleware

            _state["middleware"] = PrometheusMiddleware(
                settings_provider_factory=_bounded_provider, registry=REGISTRY, app_name=service
            )
        return _state["middleware"]


def _bounded_provider(msg: Any) -> Any:
    """FastStream's NATS metrics settings for `msg`, reporting each subject as its bounded label."""
    from faststream.nats.prometheus.provider import settings_provider_factory

    inner = settings_provider_factory(msg)
    return None if inner is None else _BoundedLabels(inner)


class _BoundedLabels:
    """Wraps FastStream's NATS metrics settings provider: the same attributes, subjects cut to kind and pipeline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.messaging_system = inner.messaging_system

    def get_consume_attrs_from_message(self, msg: Any) -> Any:
        """Consume attributes, the destination made a bounded label."""
        attrs = self._inner.get_consume_attrs_from_message(msg)
        return {**attrs, "destination_name": subjects.metric_label(attrs["destination_name"])}

    def get_publish_destination_name_from_cmd(self, cmd: Any) -> str:
        """The publish destination as a bounded label."""
        return subjects.metric_label(self._inner.get_publish_destination_name_from_cmd(cmd))


def count(key: str, n: int = 1) -> None:
    """Add `n` to `jetl_<key>_total{service}` (created on first use)."""
    if not _state["enabled"]:
        return
    counter = _COUNTERS.get(key)
    if counter is None:
        with _LOCK:
            counter = _COUNTERS.get(key)
            if counter is None:
                name = "jetl_" + _NAME.sub("_", key)
                counter = _COUNTERS[key] = Counter(name, f"jetl counter {key}", ["service"], registry=REGISTRY)
    counter.labels(service=_state["service"]).inc(n)


def ack_decided(outcome: str, disposition: str | None = None) -> None:
    """Count one input message's ack decision (and the failure behind a nak or term)."""
    if not _state["enabled"]:
        return
    ACK_DECISIONS.labels(service=_state["service"], outcome=outcome).inc()
    if disposition is not None:
        ERRORS.labels(service=_state["service"], disposition=disposition).inc()


def lag(consumer: str, pending: int, ack_pending: int) -> None:
    """Record a durable consumer's backlog."""
    if not _state["enabled"]:
        return
    PENDING.labels(consumer=consumer).set(pending)
    ACK_PENDING.labels(consumer=consumer).set(ack_pending)


def schedule_request(pipeline: str, duplicate: bool) -> None:
    """Count a schedule slot request (a duplicate is one another scheduler replica made first)."""
    if _state["enabled"]:
        SCHEDULE.labels(pipeline=pipeline, result="duplicate" if duplicate else "new").inc()


def alert(kind: str, result: str) -> None:
    """Count a webhook alert."""
    if _state["enabled"]:
        ALERTS.labels(kind=kind, result=result).inc()
