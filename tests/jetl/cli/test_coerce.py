"""The plain step in front of typer's coercion (`jetl.cli._coerce`) gives what typer's pydantic adapters give, and
hands every other value to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer._adapters import build_adapter
from typer.models import OptionInfo
from typer.testing import CliRunner

from jetl.cli import _coerce


def _adapter(annotation: type, value: Any) -> tuple[bool, Any]:
    try:
        return True, build_adapter(annotation, OptionInfo()).validate_python(value)
    except Exception:
        return False, None


@given(
    st.sampled_from(_coerce.PLAIN),
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.text(max_size=22),
        st.from_regex(r"\A[-+ _0]{0,2}[0-9]{1,20}[ _]?\Z"),
    ),
)
def test_the_plain_step_agrees_with_typers_adapter(annotation: type, value: Any) -> None:
    sure, coerced = _coerce._plain(value, annotation)
    if sure:
        ok, expected = _adapter(annotation, value)
        assert ok and coerced == expected and type(coerced) is type(expected)


def test_options_still_take_every_kind_of_value(tmp_path: Path) -> None:
    assert _coerce.install()  # the installed typer has the hook (else jetl status imports pydantic again)
    app = typer.Typer()
    seen: list[Any] = []

    @app.command()
    def cmd(
        name: str = typer.Argument(None),
        limit: int = typer.Option(20),
        timeout: float = typer.Option(600),
        where: Path = typer.Option(None),
        level: int = typer.Option(1, min=0, max=5),
    ) -> None:
        seen.append((name, limit, timeout, where, level))

    runner = CliRunner()
    assert runner.invoke(app, []).exit_code == 0
    assert runner.invoke(app, ["x", "--limit", "+7", "--timeout", "1.5", "--where", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["--limit", "-3", "--level", "4"]).exit_code == 0
    assert seen == [
        (None, 20, 600.0, None, 1),
        ("x", 7, 1.5, tmp_path, 1),
        (None, -3, 600.0, None, 4),
    ]
    assert type(seen[0][2]) is float
    for bad in (["--limit", "x"], ["--level", "9"], ["--timeout", "soon"]):
        done = runner.invoke(app, bad)
        assert done.exit_code == 2, done.output


@pytest.mark.parametrize("value", ["12", "-0", "007", "-12345678901234567"])
def test_decimal_integers(value: str) -> None:
    assert _coerce._plain(value, int) == (True, int(value))
