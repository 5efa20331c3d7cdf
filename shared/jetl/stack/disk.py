"""A full disk under the embedded nats-server's JetStream store, and its way back.

nats-server (2.15) whose store's file system fills stops answering publishes to the stream that hit it: they time out,
its log says "no space left on device", and it keeps failing them after space is freed until it is restarted.
`DiskWatch` reads the server's log as it grows (the supervisor of `jetl up` owns it); once it has seen the line, it
waits until the store's file system has room again (`EmbeddedNatsSettings.restart_free_mb`, by `os.statvfs`) and
then has the server restarted on its port and store, as a killed one is. While it waits it says so, in the stack's
log and in a status file beside the store that `jetl health` reads (`jetl.ops.health.disk_full_status`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

DISK_FULL_MARKS = ("no space left on device", "out of storage resources, will be disabled")
"""What nats-server's log says when a write to its store failed for want of disk (lower case)."""

MB = 1024 * 1024


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system under `path` (its nearest existing folder)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_full_message(path: Path, free: int) -> str:
    """What the stack's log and `jetl health` say while the store's disk is full."""
    return (
        f"JetStream store disk full: {path}, {free // MB} MB free; ingestion paused; nats-server will be restarted "
        "when room returns"
    )


@dataclass
class DiskWatch:
    """Watches one embedded nats-server's log for a full store and tells its supervisor when to restart it.

    `store` is the JetStream store folder (`store_dir` of the config), `log_path` the server's log, `status_path`
    where the status goes (beside the store, not in it: its disk is the full one), `restart_free` the bytes the store's
    file system must have free before the restart.
    """

    store: Path
    log_path: Path
    status_path: Path
    restart_free: int
    read_to: int = 0
    """How far the log was read."""
    full_since: float | None = None
    """When the full store was noticed (monotonic); None while it is not full."""
    _written: float = 0.0

    def __post_init__(self) -> None:
        self.read_to = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.status_path.unlink(missing_ok=True)  # a stack that stopped while full left it

    def saw_full(self) -> bool:
        """Whether the server's log, since last read, says a store write failed for want of disk."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.read_to)
                text = f.read()
        except OSError:
            return False
        cut = text.rfind(b"\n") + 1  # a line being written is read whole next time
        self.read_to += cut
        lowered = text[:cut].decode(errors="replace").lower()
        return any(mark in lowered for mark in DISK_FULL_MARKS)

    def poll(self, now: float | None = None) -> tuple[str | None, bool]:
        """What to say (a line for the stack's log, when the state changed) and whether to restart the server now."""
        now = time.monotonic() if now is None else now
        if self.saw_full() and self.full_since is None:
            self.full_since = now
            free = free_bytes(self.store)
            self._status(free)
            return disk_full_message(self.store, free), False
        if self.full_since is None:
            return None, False
        free = free_bytes(self.store)
        if free < self.restart_free:
            if now - self._written >= 2.0:
                self._status(free)
            return None, False
        waited = now - self.full_since
        self.full_since = None
        self.status_path.unlink(missing_ok=True)
        return (
            f"JetStream store {self.store} has room again ({free // MB} MB free, after {waited:.0f}s): restarting "
            "nats-server on its port and store",
            True,
        )

    def _status(self, free: int) -> None:
        self._written = time.monotonic()
        body = {"store": str(self.store), "free_bytes": free, "at": time.time()}
        body["detail"] = disk_full_message(self.store, free)
        # the status folder may be on the full disk too: the stack's log still says it
        with contextlib.suppress(OSError):
            self.status_path.write_text(json.dumps(body))
