"""A dashboard action is an event of no run: the tracker acks it quietly (issue 27 point 9: every pause, resume or
redrive from the dashboard logged "event of a run never requested")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from structlog.testing import capture_logs

from jetl import subjects
from jetl.events import OperatorAction
from jetl_scheduler.tracker import track


class Raw:
    """A JetStream message as the tracker's consumer hands it over."""

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject = subject
        self.data = data
        self.done: list[str] = []

    async def ack(self) -> None:
        self.done.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.done.append("nak")

    async def term(self) -> None:
        self.done.append("term")


class NoBucket:
    """A state bucket that fails any use: an operator action has no run state to write."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the tracker used the state bucket ({name}) for an operator action")


async def test_an_operator_action_is_acked_without_a_warning() -> None:
    ev = OperatorAction(pipeline="shop", action="pause", by="ui:op@127.0.0.1")
    raw = Raw(subjects.events(ev.pipeline, ev.run_id, "operator"), ev.model_dump_json().encode())
    ctx: Any = SimpleNamespace(kv=NoBucket(), settings=None, instance="t")
    with capture_logs() as logs:
        await track(ctx, [raw])
    assert raw.done == ["ack"]
    assert [e for e in logs if e.get("log_level") in ("warning", "error")] == []
