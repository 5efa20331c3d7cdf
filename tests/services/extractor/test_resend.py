"""A redrive gathers records from many dead letters: they go out in batches cut by bytes as well as by batch_size, as
the extractor cuts its own (a run of letters may hold more bytes than any message carries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from jetl import ConsoleLoader, FileExtractor, Pipeline
from jetl.errors import TerminalError
from jetl.messages.models import RunRequest
from jetl.messages.payload import PAYLOAD_HEADROOM
from jetl.messages.wire import dumps
from jetl.registry import register
from jetl.runtime.service import make_context
from jetl.settings import JetlSettings
from jetl_extractor.resend import Resend


class Row(BaseModel):
    id: int
    text: str


class Small:
    """A bus whose server takes messages of 12 KiB."""

    max_payload = PAYLOAD_HEADROOM + 8192


def resend(batch_size: int) -> Resend:
    register(
        [
            Pipeline(
                name="sized",
                extractors=[FileExtractor(Path("/none/*.jsonl"))],
                loader=ConsoleLoader(),
                schema=Row,
                batch_size=batch_size,
            )
        ]
    )
    ctx = make_context("extractor", JetlSettings())
    ctx.bus = Small()  # type: ignore[assignment]
    return Resend(ctx, RunRequest(pipeline="sized", run_id="sized-r1", redrive=[1]))


def test_redriven_records_are_cut_by_bytes_in_order_and_none_is_left_out() -> None:
    items: list[tuple[Any, str | None]] = [({"id": i, "text": "x" * 1000}, f"a.jsonl:{i + 1}") for i in range(30)]
    batches = resend(batch_size=20)._cut(items)
    assert [r["id"] for records, _ in batches for r in records] == list(range(30))  # all, in order, once
    assert len(batches) > 2  # 20 records of 1 KB do not fit 8 KiB
    for records, origins in batches:
        assert len(records) <= 20 and origins == [f"a.jsonl:{r['id'] + 1}" for r in records]
        body = len(dumps(records)) + sum(len(o) + 3 for o in origins)
        assert body <= 8192, body


def test_a_record_no_message_carries_refuses_the_redrive_before_anything_is_sent() -> None:
    items: list[tuple[Any, str | None]] = [({"id": 1, "text": "x" * 20_000}, "big.jsonl:7")]
    with pytest.raises(TerminalError, match=r"big\.jsonl:7 is \d+ bytes, more than a message carries"):
        resend(batch_size=20)._cut(items)
