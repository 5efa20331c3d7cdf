"""The `jetl` command: one typer app; each command group lives in its own module here.

The CLI is presentation: what a command knows (health, the ledger, schedules, checks, logs) lives in the library
(jetl.ops: health, ledger, schedule_state, checks, logs), where a dashboard can call it too.
"""

from __future__ import annotations

# Importing a module registers its commands; `jetl --help` lists them in this order.
# isort: off
from jetl.cli import runs, ledger, backfill, replay, dlq, schema  # noqa: F401
from jetl.cli import scaffold, pipelines, deploy, health, logs, schedule, stack, cursor, ui, context, query  # noqa: F401

# isort: on
from jetl.cli._app import app, main

__all__ = ["app", "main"]
