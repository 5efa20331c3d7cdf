"""Alerts: POST to a webhook when a run fails or a scheduled pipeline goes stale, with retries.

One alert per episode across scheduler replicas: before sending, a replica claims the episode in the state bucket
(`alert.<pipeline>.<kind>`, compare-and-set), so two replicas seeing the same failure or staleness send once. The
body is JSON with a Slack-style `text` line:

    {"kind": "run.failed", "pipeline": "orders", "run_id": "orders-20261125T1000Z", "text": "...", ...}
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import httpx
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetl import metrics
from jetl.logging import get_logger
from jetl.pipeline import Pipeline
from jetl.redact import redact_text
from jetl.state import get_mark, last_ok_key
from jetl.subjects import StateKey, check_token
from jetl_scheduler.settings import SchedulerSettings

log = get_logger("jetl.alerts")
RETRY_BASE_S = 0.5


def alert_key(pipeline: str, kind: str) -> str:
    """KV key of the last alert of a kind (`failed`, `stale`) sent for a pipeline."""
    return f"{StateKey.ALERT}.{check_token(pipeline)}.{check_token(kind)}"


async def post(
    url: str,
    body: dict[str, Any],
    *,
    retries: int = 3,
    timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> bool:
    """POST `body`; retry network errors, 429 and 5xx with exponential backoff. True once the hook took it."""
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        for attempt in range(1, max(1, retries) + 1):
            try:
                resp = await client.post(url, json=body)
                if resp.status_code < 300:
                    return True
                if resp.status_code != 429 and resp.status_code < 500:
                    log.error("alert webhook refused the alert", status=resp.status_code, kind=body.get("kind"))
                    return False
                problem = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:  # its text may quote the URL, which is a secret (a Slack hook's path)
                problem = redact_text(f"{type(exc).__name__}: {exc}", url)
            if attempt < retries:
                log.warning("alert webhook failed; retrying", attempt=attempt, error=problem)
                await asyncio.sleep(RETRY_BASE_S * 2 ** (attempt - 1))
            else:
                log.error("alert webhook failed; giving up", attempts=attempt, error=problem)
    return False


async def claim(kv: KeyValue, key: str, episode: str) -> bool:
    """Record `episode` under `key` unless it is there already; True for the one replica that recorded it."""
    try:
        entry = await kv.get(key)
        if entry.value and entry.value.decode() == episode:
            return False
        await kv.update(key, episode.encode(), last=entry.revision)
        return True
    except (KeyNotFoundError, NotFoundError):
        pass
    except KeyWrongLastSequenceError:
        return False
    try:
        await kv.create(key, episode.encode())
        return True
    except Exception:  # another replica created it first
        return False


class Alerter:
    """Sends the scheduler's alerts (a no-op without `alert_webhook_url`)."""

    def __init__(self, settings: SchedulerSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.transport = transport
        self.pending: set[asyncio.Task[bool]] = set()

    @property
    def enabled(self) -> bool:
        """A webhook is configured (an empty value, as compose passes an unset variable, is none)."""
        url = self.settings.alert_webhook_url
        return url is not None and bool(url.get_secret_value().strip())

    async def send(self, kv: KeyValue | None, kind: str, pipeline: str, episode: str, body: dict[str, Any]) -> bool:
        """Claim the episode, then POST (True when this replica sent it)."""
        if not self.enabled or self.settings.alert_webhook_url is None:
            return False
        if kv is not None and not await claim(kv, alert_key(pipeline, kind.replace(".", "_")), episode):
            return False
        body = {"kind": kind, "pipeline": pipeline, "sent_at": datetime.now(UTC).isoformat(), **body}
        ok = await post(
            self.settings.alert_webhook_url.get_secret_value(),
            body,
            retries=self.settings.alert_retries,
            timeout=self.settings.alert_timeout_seconds,
            transport=self.transport,
        )
        metrics.alert(kind, "sent" if ok else "failed")
        log.info("alert sent" if ok else "alert not delivered", kind=kind, pipeline=pipeline, episode=episode)
        return ok

    def run_failed(self, kv: KeyValue | None, pipeline: str, run_id: str, error: str, stage: str = "") -> None:
        """Alert on a failed run, in the background (the tracker does not wait for the webhook)."""
        if not self.enabled:
            return
        text = f"jetl: run {run_id} of pipeline {pipeline} failed{f' at {stage}' if stage else ''}: {error}"
        body = {"run_id": run_id, "error": error, "stage": stage, "text": text}
        task = asyncio.create_task(self.send(kv, "run.failed", pipeline, run_id, body))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def check_stale(self, kv: KeyValue, pipelines: list[Pipeline], now: datetime) -> list[str]:
        """Alert once per stale episode for each active scheduled pipeline; returns the stale pipelines."""
        stale: list[str] = []
        for p in pipelines:
            if p.schedule is None:
                continue
            ok = await get_mark(kv, last_ok_key(p.name))
            # never succeeded: nothing to be stale against (its failures alert as run.failed)
            if ok is None or not p.schedule.is_stale(ok.at, now, self.settings.stale_factor):
                continue
            stale.append(p.name)
            episode = f"stale-since:{ok.run_id}"
            text = (
                f"jetl: pipeline {p.name} is stale: no successful run since {ok.at.isoformat()} "
                f"(schedule {p.schedule.expression}, last success {ok.run_id})"
            )
            body = {"last_success": ok.at.isoformat(), "last_success_run_id": ok.run_id, "text": text}
            with contextlib.suppress(Exception):
                await self.send(kv, "stale", p.name, episode, body)
        return stale

    async def drain(self) -> None:
        """Wait for alerts still being sent (on shutdown)."""
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
