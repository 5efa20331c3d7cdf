"""The health of a deployment as data: NATS, streams, consumers and their lag, service heartbeats, the destination
(asked of a running loader), each scheduled pipeline's freshness against its schedule, and how far each pipeline
that reads a log (`LagExtractor`: a CDC slot) is behind its source.

`jetl health` prints these checks; a dashboard can show the same list.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import BaseModel

from jetl import subjects
from jetl.archive import Archive
from jetl.protocols import LagExtractor, SourceLag
from jetl.state import HEARTBEAT_PREFIX, RunMark, get_mark, get_paused, last_failed_key, last_ok_key, watch_values
from jetl.subjects import CONSUMERS, STREAMS
from jetl.topology import BUCKET

STATUS_FILE = "disk-full.json"
"""Written by the supervisor of `jetl up` (`jetl.stack.disk.DiskWatch`) in the embedded server's folder
(`<data>/nats`): the state of a full store while the supervisor waits for room."""

STATUS_FRESH_S = 30.0
"""A status file older than this was left by a stack that is gone: `jetl health` ignores it."""


def disk_full_status(server_dir: Path) -> str | None:
    """What a running `jetl up` says of its server's full store (`STATUS_FILE` in `server_dir`), or None."""
    try:
        body = orjson.loads((server_dir / STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or time.time() - float(body.get("at", 0)) > STATUS_FRESH_S:
        return None
    return str(body.get("detail") or "")


if TYPE_CHECKING:
    from typing import Any

    from jetl.ops.handle import Handle
    from jetl.pipeline import Pipeline

SERVICE_NAMES = ("extractor", "transformer", "loader", "scheduler")
"""The services a deployment runs, by default all expected up."""


class HealthCheck(BaseModel):
    """One check of the deployment: `fail` makes it unhealthy, `warn` does not."""

    check: str
    """What kind of thing was checked: nats, stream, consumer, kv, object store, jetstream, archive, service,
    destination, pipeline(s). Streams, buckets, the store and the archive show used / limit."""
    name: str
    """Which one (a stream name, a service, a pipeline)."""
    status: Literal["ok", "warn", "fail"]
    """The verdict."""
    detail: str
    """What was seen, for a human."""


CAPACITY_WARN = 0.80
"""A stream, bucket, store or archive this full warns in `jetl health`."""
CAPACITY_FAIL = 0.95
"""This full is unhealthy: its writers are about to pause (or have) until room returns."""


def capacity(
    used: int, limit: int | None, setting: str, messages: int | None = None
) -> tuple[Literal["ok", "warn", "fail"], str]:
    """The verdict and detail of one store's fill: used / limit, warn at 80%, fail at 95% (with the setting to raise);
    a limit of None, 0 or below is none."""
    count = f", {messages} message(s)" if messages is not None else ""
    if limit is None or limit <= 0:
        return "ok", f"{size(used)} used, no limit{count}"
    share = used / limit
    detail = f"{size(used)} of {size(limit)} used ({share:.0%}){count}"
    if share >= CAPACITY_FAIL:
        return "fail", f"{detail}: full, writes pause until room returns; raise {setting}"
    if share >= CAPACITY_WARN:
        return "warn", f"{detail}: nearly full; raise {setting}"
    return "ok", detail


def size(n: float) -> str:
    """Bytes for people: 512 B, 3.0 KiB, 39.1 MiB, 3.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def healthy(checks: list[HealthCheck]) -> bool:
    """No check failed."""
    return not any(c.status == "fail" for c in checks)


async def gather_health(
    jc: Handle,
    *,
    services: list[str],
    heartbeat_timeout: float,
    max_lag: int | None,
    stale_factor: float,
    pipelines: dict[str, Pipeline] | None,
    timeout: float,
) -> list[HealthCheck]:
    """Every health check, in a stable order (open `jc` with `deployed=False`: missing streams are checks here)."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import NotFoundError

    rows: list[HealthCheck] = []

    def add(check: str, name: str, status: Literal["ok", "warn", "fail"], detail: str) -> None:
        rows.append(HealthCheck(check=check, name=name, status=status, detail=detail))

    s, nc = jc.settings, jc.conn
    v = nc.connected_server_version
    add("nats", s.nats.url, "ok", f"nats-server {v.major}.{v.minor}.{v.patch}, JetStream")
    js = nc.jetstream()
    for spec in STREAMS.values():
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            add("stream", spec.name, "fail", "missing (run `jetl deploy`)")
            continue
        setting = f'JETL_NATS__STREAM_MAX_BYTES (its "{spec.kind.value}" entry, then `jetl deploy`)'
        add("stream", spec.name, *capacity(info.state.bytes, info.config.max_bytes, setting, info.state.messages))
    for durable, kind in CONSUMERS.items():
        stream = STREAMS[kind].name
        infos = []
        if durable in subjects.PER_PIPELINE:  # one per pipeline: each pipeline's lag (`subjects.stage_durable`)
            with contextlib.suppress(NotFoundError):
                infos = [ci for ci in await js.consumers_info(stream) if subjects.durable_of(ci.name) == durable]
        else:
            with contextlib.suppress(NotFoundError):
                infos = [await js.consumer_info(stream, durable)]
            if not infos:
                add("consumer", f"{stream}/{durable}", "fail", "missing (run `jetl deploy`)")
        for ci in sorted(infos, key=lambda ci: ci.name):
            pending, acking = ci.num_pending or 0, ci.num_ack_pending or 0
            status: Literal["ok", "fail"] = "fail" if max_lag is not None and pending > max_lag else "ok"
            add("consumer", f"{stream}/{ci.name}", status, f"lag {pending} pending, {acking} awaiting ack")
    try:
        kv = await jc.kv()
        info = await js.stream_info(f"KV_{BUCKET}")
        add("kv", BUCKET, *capacity(info.state.bytes, info.config.max_bytes, "JETL_NATS__STATE_MAX_BYTES"))
    except Exception:
        add("kv", BUCKET, "fail", "missing (run `jetl deploy`)")
        kv = None
    try:
        info = await js.stream_info(f"OBJ_{subjects.DLQ_BODIES_BUCKET}")
        limit = "jetl.topology.DLQ_BODIES_MAX_BYTES"
        add("object store", subjects.DLQ_BODIES_BUCKET, *capacity(info.state.bytes, info.config.max_bytes, limit))
    except NotFoundError:
        add("object store", subjects.DLQ_BODIES_BUCKET, "fail", "missing (run `jetl deploy`)")
    account = await js.account_info()
    store_limit = account.limits.max_storage if account.limits is not None else None
    add("jetstream", "file store", *capacity(account.storage, store_limit, "the account's or server's max_file_store"))
    disk_full = disk_full_status(s.data_dir / "nats")  # what the supervisor of a `jetl up` here waits for
    if disk_full:
        add("jetstream", "store disk", "fail", disk_full)
    archive = Archive.of(s)
    try:
        use = await asyncio.to_thread(archive.usage)
        add("archive", archive.shown, *capacity(use.used, use.limit, "JETL_ARCHIVE__MAX_BYTES or its disk"))
    except Exception as exc:  # an object store that cannot be reached: the archiver cannot write either
        add("archive", archive.shown, "fail", f"unreadable: {type(exc).__name__}: {exc}")
    now = time.time()
    beats = await service_beats(jc) if kv is not None else {}
    for name in services:
        seen = beats.get(name, [])
        fresh = [b for b in seen if now - float(b.get("at", 0)) <= heartbeat_timeout]
        paused = sorted({str(b["paused"]) for b in fresh if b.get("paused")})
        if paused:  # publishing waits for room in a full stream or store (`jetl.bus.Bus`): it resumes by itself
            add("service", name, "warn", f"{len(fresh)} instance(s), paused: {'; '.join(paused)}")
        elif fresh:
            restarts = sum(int(b.get("restarts") or 0) for b in fresh)
            add(
                "service",
                name,
                "ok",
                f"{len(fresh)} instance(s): {', '.join(sorted(b['instance'] for b in fresh))}"
                + (f"; restarted {restarts} time(s) by its supervisor" if restarts else ""),
            )
        elif seen:
            last = max(float(b.get("at", 0)) for b in seen)
            add("service", name, "fail", f"not seen for {now - last:.0f}s (heartbeat every 5s)")
        else:
            add("service", name, "fail", "never seen (is it running? `jetl serve " + name + "`)")
    broken: dict[str, str] = {}
    for seen in beats.values():
        for b in seen:
            if now - float(b.get("at", 0)) <= heartbeat_timeout:
                broken.update(b.get("load_errors") or {})
    unbound: dict[str, set[str]] = {}
    for name, seen in beats.items():
        for b in seen:
            if now - float(b.get("at", 0)) <= heartbeat_timeout:
                for pipeline, consumer in (b.get("unbound") or {}).items():
                    unbound.setdefault(consumer, set()).add(f"{name} cannot take pipeline {pipeline}'s batches")
    for consumer, why in sorted(unbound.items()):
        add("consumer", consumer, "fail", f"missing: {'; '.join(sorted(why))} (run `jetl deploy`)")
    for file, error in sorted(broken.items()):
        add("module", file, "fail", f"failed to load, skipped by the services: {error}")
    try:
        reply = await nc.request(subjects.control("loader", "health"), b"", timeout=timeout)
        checks = orjson.loads(reply.data).get("checks", {})
        dest = checks.get("destination", {"ok": False, "detail": "the loader has no destination check"})
        add("destination", "loader", "ok" if dest["ok"] else "fail", dest["detail"])
    except (TimeoutError, NoRespondersError, NatsTimeout):
        add("destination", "loader", "fail", "no loader answered (the loader checks the destination)")
    if pipelines is None:
        add("pipelines", "-", "warn", f"pipelines folder {s.pipelines_dir} not found: freshness not checked")
    else:
        now_dt = datetime.now(UTC)
        for p in sorted(pipelines.values(), key=lambda p: p.name):
            if p.schedule is None or kv is None:
                continue
            f = await freshness(jc, p, now_dt, stale_factor)
            ok, failed = f.last_ok, f.last_failed
            if f.paused:
                add("pipeline", p.name, "ok", "paused")
            elif ok is not None:
                age = now_dt - ok.at
                if f.stale:
                    add(
                        "pipeline",
                        p.name,
                        "fail",
                        f"stale: last success {ok.run_id} {ago(age.total_seconds())} "
                        f"ago, schedule {p.schedule.expression}",
                    )
                else:
                    add("pipeline", p.name, "ok", f"last success {ok.run_id} {ago(age.total_seconds())} ago")
            elif failed is not None:
                add("pipeline", p.name, "fail", f"never succeeded; last failure {failed.run_id}: {failed.error}")
            else:
                add("pipeline", p.name, "warn", "no run yet")
        for p in sorted(pipelines.values(), key=lambda p: p.name):
            for lag in await source_lags(p, timeout):
                if isinstance(lag, SourceLag):
                    add("source", p.name, "ok", f"lag {lag_text(lag)} ({lag.detail})")
                elif lag.startswith("TimeoutError"):  # a slow answer is not a broken source
                    add("source", p.name, "warn", f"lag not told within {timeout:g}s")
                else:
                    add("source", p.name, "fail", f"lag unknown: {lag}")
    return rows


async def source_lags(p: Pipeline, timeout: float) -> list[SourceLag | str]:
    """How far each of `p`'s log-reading extractors (`LagExtractor`) is behind its source, or why it cannot tell."""
    out: list[SourceLag | str] = []
    for extractor in p.extractors:
        if isinstance(extractor, LagExtractor):
            try:
                out.append(await asyncio.wait_for(extractor.lag(p.name), timeout))
            except Exception as exc:  # the source's own words, redacted by the extractor
                out.append(f"{type(exc).__name__}: {exc}")
    return out


def lag_text(lag: SourceLag) -> str:
    """`12.0 MiB, 3s behind`: a log source's lag for people."""
    seconds = "?" if lag.seconds is None else ago(lag.seconds)
    return f"{size(lag.bytes)}, {seconds} behind"


class Freshness(BaseModel):
    """A pipeline's schedule state and latest runs, as `jetl health` and the dashboard judge staleness by them."""

    paused: bool
    """Paused by `jetl pause` or by its code (`Cron(paused=True)`); False without a schedule."""
    last_ok: RunMark | None
    """Its latest completed run."""
    last_failed: RunMark | None
    """Its latest failed run."""
    stale: bool
    """Scheduled, not paused, and no success within `stale_factor` slot lengths (or never)."""


async def freshness(jc: Handle, p: Pipeline, now: datetime, stale_factor: float) -> Freshness:
    """One pipeline's pause state, latest success and failure, and whether its data is older than promised."""
    kv = await jc.kv()
    override = await get_paused(kv, p.name)
    paused = p.schedule is not None and (override if override is not None else p.schedule.paused)
    ok = await get_mark(kv, last_ok_key(p.name))
    failed = await get_mark(kv, last_failed_key(p.name))
    stale = (
        p.schedule is not None
        and not paused
        and ((ok is None and failed is not None) or (ok is not None and p.schedule.is_stale(ok.at, now, stale_factor)))
    )
    return Freshness(paused=paused, last_ok=ok, last_failed=failed, stale=stale)


async def service_beats(jc: Handle) -> dict[str, list[dict[str, Any]]]:
    """Per service, the heartbeats its instances left (instance, at, started_at, stats, lag); an instance that
    stopped keeps its last one until the key expires, so more instances than are running means restarts."""
    beats: dict[str, list[dict[str, Any]]] = {}
    for raw in (await watch_values(await jc.kv(), f"{HEARTBEAT_PREFIX}.>")).values():
        with_data = orjson.loads(raw)
        beats.setdefault(with_data.get("service", "?"), []).append(with_data)
    return beats


class ServedPipelines(BaseModel):
    """The pipelines the running services loaded, as their fresh heartbeats report them."""

    pipelines: dict[str, str]
    """Name: code hash (of the module the services loaded)."""
    load_errors: dict[str, str]
    """File: why it failed to load (its pipelines are not served)."""

    def check(self, name: str) -> str:
        """The code hash of a served pipeline, or a ConfigError saying why `name` cannot run."""
        from jetl.errors import ConfigError
        from jetl.registry import failed_module

        if name in self.pipelines:
            return self.pipelines[name]
        why = failed_module(name, self.load_errors)
        if why is not None:
            raise ConfigError(f"pipeline {name!r} failed to load: {why}", hint="fix the module; the services reload it")
        known = ", ".join(sorted(self.pipelines)) or "none"
        broken = f"; {len(self.load_errors)} module(s) failed to load (jetl health)" if self.load_errors else ""
        raise ConfigError(f"no pipeline named {name!r} (known: {known}){broken}", hint="see `jetl list`")


async def served_pipelines(jc: Handle, heartbeat_timeout: float = 15.0) -> ServedPipelines | None:
    """What the running extractors loaded (what a run request can run), from their fresh heartbeats; None when no
    extractor that reports its pipelines is running."""
    now = time.time()
    fresh = [
        b
        for b in (await service_beats(jc)).get("extractor", [])
        if now - float(b.get("at", 0)) <= heartbeat_timeout and "pipelines" in b
    ]
    if not fresh:
        return None
    served: dict[str, str] = {}
    errors: dict[str, str] = {}
    for b in fresh:
        served.update(b["pipelines"])
        errors.update(b.get("load_errors") or {})
    return ServedPipelines(pipelines=served, load_errors=errors)


def ago(seconds: float) -> str:
    """A duration for people: 42s, 7m, 3.5h, 2.0d."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
