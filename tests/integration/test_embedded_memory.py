"""The embedded nats-server runs under a Go memory limit (GOMEMLIMIT), so that its RSS stays flat on a long input."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetl.settings import JetlSettings
from jetl.stack.embedded import NatsServer

pytestmark = pytest.mark.integration


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def test_the_embedded_server_gets_the_memory_limit_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETL_EMBEDDED_NATS__MEMORY_LIMIT_MB", "200")
    server = NatsServer(tmp_path / "nats", memory_limit_mb=JetlSettings().embedded_nats.memory_limit_mb).start()
    try:
        assert server.proc is not None
        assert environ(server.proc.pid)["GOMEMLIMIT"] == "200MiB"
    finally:
        server.stop()
    off = NatsServer(tmp_path / "nats2", memory_limit_mb=0).start()
    try:
        assert off.proc is not None and "GOMEMLIMIT" not in environ(off.proc.pid)
    finally:
        off.stop()
