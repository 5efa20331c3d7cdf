"""ConsoleLoader: a rich table for people, JSON lines for pipes, a row limit, no reprint of a redelivered batch."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from jetl import ConsoleLoader, LoadContext
from jetl.errors import ConfigError
from jetl.messages.ids import batch_id

ROWS = [
    {"id": i, "name": f"name-{i}", "price": Decimal("1.50"), "at": datetime(2026, 1, 1, tzinfo=UTC)} for i in range(5)
]


def ctx(seq: int = 1) -> LoadContext:
    return LoadContext(pipeline="shop", run_id="r1", batch_id=batch_id("r1", seq))


def test_jsonl_to_stdout_with_row_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert ConsoleLoader(style="jsonl", max_rows=3).load(ROWS, ctx()) == 5
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": i, "name": f"name-{i}", "price": "1.50", "at": "2026-01-01T00:00:00+00:00"} for i in range(3)
    ]


def test_table_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    ConsoleLoader(style="table", max_rows=2).load(ROWS, ctx())
    out = capsys.readouterr().out
    assert "shop r1/000001 (5 rows)" in out
    assert "name-0" in out and "name-1" in out and "name-2" not in out
    assert "3 more rows not shown" in out
    assert "{" not in out  # a table, not JSON


def test_auto_picks_jsonl_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    ConsoleLoader().load(ROWS[:1], ctx())
    assert json.loads(capsys.readouterr().out)["id"] == 0


def test_no_limit_and_a_given_stream() -> None:
    stream = io.StringIO()
    ConsoleLoader(style="jsonl", max_rows=None, file=stream).load(ROWS, ctx())
    assert len(stream.getvalue().splitlines()) == 5


def test_redelivered_batch_is_not_printed_twice(capsys: pytest.CaptureFixture[str]) -> None:
    loader = ConsoleLoader(style="jsonl", remember=1)
    loader.load(ROWS[:2], ctx(1))
    assert loader.load(ROWS[:2], ctx(1)) == 2  # counts as loaded, prints nothing
    assert len(capsys.readouterr().out.splitlines()) == 2
    loader.load(ROWS[:1], ctx(2))
    loader.load(ROWS[:1], ctx(1))  # forgotten: only the last `remember` batch ids are kept
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_bad_options() -> None:
    with pytest.raises(ConfigError):
        ConsoleLoader(style="html")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ConsoleLoader(max_rows=-1)
