"""Drive the `jetl` CLI in-process, as a person would at a shell, against a given NATS and pipelines folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class CliResult:
    """Exit code and output of one command."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The command's --json output."""
        return json.loads(self.stdout)


def jetl(
    *args: str, nats_url: str, pipelines_dir: Path, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> CliResult:
    """Run `jetl ARGS...` with JETL_NATS__URL, JETL_PIPELINES_DIR (and `env`) set for the call."""
    from typer.testing import CliRunner

    from jetl.cli import app

    full = {"JETL_NATS__URL": nats_url, "JETL_PIPELINES_DIR": str(pipelines_dir), **(env or {})}
    if data_dir is not None:
        full["JETL_DATA_DIR"] = str(data_dir)
    result = CliRunner().invoke(app, list(args), env=full)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)
