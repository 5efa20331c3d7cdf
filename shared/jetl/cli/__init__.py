"""The `jetl` command: one typer app; each command group lives in its own module here."""

from __future__ import annotations

from jetl.cli import (  # noqa: F401  - importing registers the commands
    commands_events,
    commands_ops,
    commands_run,
    commands_stack,
)
from jetl.cli._app import app, main

__all__ = ["app", "main"]
