"""Drive the `jetl` CLI in-process, as a person would at a shell, against a given NATS and pipelines folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def jetl_up(*args: str, data_dir: Path, pipelines_dir: Path, until: str) -> Iterator[str]:
    """Run `jetl up ARGS... --data-dir DATA` as its own process, as a user does, and yield what it printed up to and
    including the first line containing `until`; Ctrl-C (SIGINT) stops it afterwards."""
    env = {**os.environ, "JETL_PIPELINES_DIR": str(pipelines_dir), "PYTHONUNBUFFERED": "1", "COLUMNS": "500"}
    env.pop("JETL_NATS__URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jetl", "up", *args, "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = ""
        while until not in seen:
            line = proc.stdout.readline()
            assert line, f"jetl up exited ({proc.poll()}) before printing {until!r}:\n{seen}"
            seen += line
        yield seen
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
