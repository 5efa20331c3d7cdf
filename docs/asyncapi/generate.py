"""Write docs/asyncapi/<service>.json, one AsyncAPI 3.0 document a service: `uv run python docs/asyncapi/generate.py`.

Each document comes from the service's own FastStream app (its `create_app` factory), through FastStream's
specification builder (`app.schema.to_specification()`, what `faststream docs gen` calls): the subscribers are the
app's real ones. The services publish through the nats-py connection underneath FastStream (`jetl.bus.Publisher`),
which FastStream cannot see, so `PUBLISHES` declares those subjects here as documentation-only publishers, with the
message models as payloads. Building an app connects to nothing; it discovers an empty pipelines folder, so the
documents do not depend on the pipelines installed. tests/docs/test_asyncapi.py fails when the checked-in files
drift from the code.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import jetl
from jetl import subjects
from jetl.events import Event
from jetl.messages import Batch, DeadLetter, RunRequest
from jetl.settings import NatsSettings
from jetl.subjects import Kind

SERVICES = ("extractor", "transformer", "loader", "scheduler")
OUT = Path(__file__).resolve().parent
# The compose host name, so the documents do not depend on the machine they were generated on.
NATS_URL = "nats://nats:4222"

_RAW = "Batch envelope (one JSON line), then the records as the source gave them (JSON lines)."
_CLEAN = "Batch envelope (one JSON line), then the records: JSON lines, or Arrow IPC for Arrow-capable loaders."
_MESSAGES: dict[Kind, tuple[Any, str]] = {
    Kind.RUN: (RunRequest, "A run request; JETL_RUNS is a work queue, one extractor takes it."),
    Kind.RAW: (Batch, _RAW),
    Kind.CLEAN: (Batch, _CLEAN),
    Kind.EVENTS: (Event, "A lifecycle event (discriminated on `type`): the audit log the run state folds from."),
    Kind.DLQ: (DeadLetter, "A rejected record or batch with its error."),
    Kind.LOGS: (dict[str, Any], "One structlog line of one run, shipped by every service."),
}
# What each service publishes (jetl.bus.Publisher on the raw connection; FastStream does not see these).
PUBLISHES: dict[str, tuple[Kind, ...]] = {
    "extractor": (Kind.RAW, Kind.CLEAN, Kind.EVENTS, Kind.DLQ, Kind.LOGS),  # clean: replay of a transformer-less run
    "transformer": (Kind.CLEAN, Kind.EVENTS, Kind.DLQ, Kind.LOGS),
    "loader": (Kind.EVENTS, Kind.DLQ, Kind.LOGS),
    "scheduler": (Kind.RUN, Kind.EVENTS, Kind.LOGS),
}


def specification(service: str, pipelines_dir: Path) -> dict[str, Any]:
    """The AsyncAPI document of one service, as JSON-ready data."""
    app_module = importlib.import_module(f"jetl_{service}.app")
    settings_cls = getattr(importlib.import_module(f"jetl_{service}.settings"), f"{service.capitalize()}Settings")
    settings = settings_cls(nats=NatsSettings(url=NATS_URL), pipelines_dir=pipelines_dir, metrics_port=0)
    app = app_module.create_app(settings)
    for kind in PUBLISHES[service]:
        model, description = _MESSAGES[kind]
        app.broker.publisher(
            subjects.pattern(kind),
            title=f"{service}:{kind.value}",
            description=f"{subjects.STREAMS[kind].name}: {description}",
            schema=model,
            include_in_schema=True,
        )
    spec = app.schema
    spec.title = f"jetl-{service}"
    spec.version = jetl.__version__
    spec.description = (app_module.__doc__ or "").strip()
    data: dict[str, Any] = spec.to_specification().to_jsonable()
    return data


def render(service: str, pipelines_dir: Path) -> str:
    """The checked-in text of one document."""
    return json.dumps(specification(service, pipelines_dir), indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Write every service's document next to this script."""
    with tempfile.TemporaryDirectory() as empty:
        for service in SERVICES:
            path = OUT / f"{service}.json"
            path.write_text(render(service, Path(empty)))
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
