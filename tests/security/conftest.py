"""What the security suites share: a client that records the server's permission violations, and the streams'
last sequences (a refused publish leaves every one where it was)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
from nats.aio.client import Client

from jetl import subjects
from jetl.access import Role
from jetl.bus import connect
from jetl.stack.embedded import Stack
from jetl.testing.pipelines import file_pipeline


class Attempt:
    """A nats-py connection that records the asynchronous errors the server sends (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def error_cb(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    async def connect_as(self, stack: Stack, role: Role) -> Client:
        assert stack.credentials is not None
        return await nats.connect(
            stack.nats_url,
            user=role,
            password=stack.credentials.password(role).get_secret_value(),
            error_cb=self.error_cb,
            allow_reconnect=False,
            inbox_prefix=subjects.inbox_prefix(role),  # as jetl connects: its replies are the only ones it hears
        )

    async def refused(self, what: str, timeout: float = 5.0) -> str:
        """The server's permission violation naming `what` (waits for it: the server answers asynchronously)."""
        for _ in range(int(timeout / 0.05)):
            found = [e for e in self.errors if "permissions violation" in e.lower() and what.lower() in e.lower()]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permissions violation for {what!r}; errors seen: {self.errors}")


async def last_seqs(stack: Stack) -> dict[str, int]:
    """Every jetl stream's last sequence: a refused publish leaves each where it was (a work queue's count would not
    show a message the extractor already took; its sequence would)."""
    nc = await connect(stack.operator)
    try:
        js = nc.jetstream()
        return {spec.name: (await js.stream_info(spec.name)).state.last_seq for spec in subjects.STREAMS.values()}
    finally:
        await nc.close()


def items_pipeline(root: Path, rows: int) -> Path:
    """A pipelines folder under `root` with `items`, a file pipeline over `rows` records (`root/in`) loading into
    `root/out`; returns the folder."""
    inputs, pipelines = root / "in", root / "pipelines"
    inputs.mkdir()
    pipelines.mkdir()
    (inputs / "items.jsonl").write_text("".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in range(rows)))
    text = file_pipeline("items", batch_size=10).replace("INPUT", str(inputs)).replace("OUTPUT", str(root / "out"))
    (pipelines / "items_pipeline.py").write_text(text)
    return pipelines
