"""Control-plane benchmark: how fast the run tracker folds events, and whether a small run waits behind a big one.

    uv run python bench/control_plane.py fold [--runs 4] [--batches 2000] [--replicas 1,2]
    uv run python bench/control_plane.py fairness [--big 1000000] [--small 500] [--batch 5000]
    uv run python bench/control_plane.py            # both, at their defaults

- fold: the embedded nats-server and the scheduler service alone (1 or more replicas, cron off). The events of
  `--runs` runs of `--batches` batches each (run.requested, run.started, then batch.extracted, batch.transformed and
  batch.loaded per batch, then run.extracted) are published to JETL_EVENTS as fast as the publisher can, runs
  interleaved, as the stages of several pipelines would; timed from the first publish to the last run.completed.
  Prints events/s folded (goal: >= 5,000 with one scheduler), each run's delay from its last batch.loaded to its
  run.completed (goal: <= 2 s for a 2,000-batch run) and the gain of a second replica (goal: >= 1.6x on a machine
  with more cores than the 2 this was written on).
- fairness: the embedded stack with the benchmark's pipelines (bench/pipelines): a `--small`-record run of
  `bench_latency` alone, then the same requested while a `--big`-record run of `bench_orders` is in flight (its first
  batch loaded). Prints the ratio and the goal: the small run within twice its solo time plus 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import LATENCY_PIPELINE, PIPELINE, generate  # noqa: E402
from run import cpu_seconds  # noqa: E402

RECORDS_PER_BATCH = 50


def run_events(pipeline: str, run_id: str, batches: int) -> tuple[list[Any], list[Any], list[Any]]:
    """A run's events as its stages publish them: (the run's opening events, per batch events, the closing one)."""
    from jetl.events import BatchExtracted, BatchLoaded, BatchTransformed, RunExtracted, RunRequested, RunStarted

    base: dict[str, Any] = {"pipeline": pipeline, "run_id": run_id, "service": "bench"}
    opening = [RunRequested(**base), RunStarted(**base)]
    per_batch = []
    for seq in range(batches):
        ids = {**base, "batch_id": f"{run_id}/{seq:06d}", "seq": seq}
        per_batch.append(
            [
                BatchExtracted(**ids, records=RECORDS_PER_BATCH),
                BatchTransformed(**ids, records_in=RECORDS_PER_BATCH, records_out=RECORDS_PER_BATCH),
                BatchLoaded(**ids, records=RECORDS_PER_BATCH),
            ]
        )
    closing = [RunExtracted(**base, batches=batches, records=batches * RECORDS_PER_BATCH)]
    return opening, per_batch, closing


async def publish_all(nc: Any, events: list[Any], window: int = 512) -> float:
    """Publish `events` in order, `window` in flight at a time; returns when the last was stored."""
    from jetl import subjects
    from jetl.events import _FROM

    js = nc.jetstream()
    for i in range(0, len(events), window):
        chunk = events[i : i + window]
        await asyncio.gather(
            *(  # on the subject of a role the tracker trusts with the event (the operator user may say any)
                js.publish(
                    subjects.events(ev.pipeline, ev.run_id, sorted(_FROM[ev.type])[0]),
                    ev.model_dump_json().encode(),
                    headers=None,
                )
                for ev in chunk
            )
        )
    return time.perf_counter()


async def completions(nc: Any, ids: list[str]) -> tuple[dict[str, float], asyncio.Event, Any]:
    """Watch the log for run.completed of `ids`: (when each came, set once all have, the subscription)."""
    from jetl import subjects
    from jetl.events import parse_event
    from jetl.subjects import Kind

    done: dict[str, float] = {}
    finished = asyncio.Event()

    async def seen(msg: Any) -> None:
        ev = parse_event(msg.data)
        if ev.type == "run.completed" and ev.run_id in ids:
            done.setdefault(ev.run_id, time.perf_counter())
            if len(done) == len(ids):
                finished.set()

    return done, finished, await nc.subscribe(subjects.pattern(Kind.EVENTS), cb=seen)


async def fold_round(stack: Any, runs: int, batches: int, profile: Path | None = None) -> dict[str, Any]:
    """Publish `runs` interleaved runs of `batches` batches; time until every run.completed."""
    from jetl.bus import connect

    nc = await connect(stack.operator)
    try:
        stamp = int(time.time())
        ids = [f"fold-{stamp}-{r}" for r in range(runs)]
        parts = [run_events(f"cp{r}", ids[r], batches) for r in range(runs)]
        events: list[Any] = [ev for opening, _, _ in parts for ev in opening]
        last_load_index: dict[str, int] = {}
        # stage by stage, as pipelines run side by side: every run's batch k, then batch k+1...
        for seq in range(batches):
            for r, (_, per_batch, _) in enumerate(parts):
                events += per_batch[seq]
                last_load_index[ids[r]] = len(events) - 1
        events += [ev for _, _, closing in parts for ev in closing]
        done, finished, sub = await completions(nc, ids)
        pids = {name: p.proc.pid for name, p in stack.procs.items() if p.proc is not None}
        if stack.server is not None and stack.server.proc is not None:
            pids["nats-server"] = stack.server.proc.pid
        spies: list[Any] = []
        if profile is not None:
            import spy

            spies = spy.start({k: v for k, v in pids.items() if k != "nats-server"}, profile)
            await asyncio.sleep(1.0)  # py-spy attaches
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        # the time each run's last batch.loaded was stored: publish up to it, then the rest
        stored: dict[str, float] = {}
        cut = sorted(set(last_load_index.values()))
        start = 0
        for end in cut:
            t = await publish_all(nc, events[start : end + 1])
            for run_id, i in last_load_index.items():
                if i == end:
                    stored[run_id] = t
            start = end + 1
        t_published = await publish_all(nc, events[start:])
        await asyncio.wait_for(finished.wait(), timeout=600)
        await sub.unsubscribe()
        t_end = max(done.values())
        if spies:
            import spy

            spy.stop(spies)
        await asyncio.sleep(3.0)  # the tracker summarizes finished runs' batch keys in the background
        sizes = await store_sizes(nc)
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        return {
            "cpu": cpu,
            "events_per_cpu_s": len(events) / max(1e-9, sum(v for k, v in cpu.items() if k != "nats-server")),
            "events": len(events),
            "seconds": t_end - t0,
            "events_per_s": len(events) / (t_end - t0),
            "published_per_s": len(events) / (t_published - t0),
            "delay_after_last_load": {r: done[r] - stored[r] for r in ids},
            "sizes": sizes,
        }
    finally:
        await nc.close()


async def backlog_round(stack: Any, runs: int, batches: int) -> dict[str, Any]:
    """The tracker's capacity: the scheduler(s) stopped, `runs` runs of `batches` batches published, the scheduler(s)
    started again; timed from the tracker's first delivery of them to the last run.completed (every fetch full)."""
    from jetl.bus import connect
    from jetl.subjects import STREAMS, TRACKER_DURABLES, Kind

    for p in stack.procs.values():
        p.stop()
    nc = await connect(stack.operator)
    try:
        stamp = int(time.time())
        ids = [f"backlog-{stamp}-{r}" for r in range(runs)]
        events: list[Any] = []
        for r in range(runs):
            opening, per_batch, closing = run_events(f"bl{r}", ids[r], batches)
            events += opening + [ev for group in per_batch for ev in group] + closing
        await publish_all(nc, events)
        done, finished, sub = await completions(nc, ids)
        js = nc.jetstream()

        async def delivered() -> int:  # over every tracker shard
            infos = [await js.consumer_info(STREAMS[Kind.EVENTS].name, d) for d in TRACKER_DURABLES]
            return sum(i.delivered.consumer_seq for i in infos)

        before = await delivered()
        for p in stack.procs.values():
            p.start()
        while await delivered() == before:  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # the server is asked: nothing here to wait on
        t0 = time.perf_counter()
        pids = [p.proc.pid for p in stack.procs.values() if p.proc is not None]
        cpu0 = sum(cpu_seconds(pid) for pid in pids)
        await asyncio.wait_for(finished.wait(), timeout=600)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
        await sub.unsubscribe()
        seconds = max(done.values()) - t0
        return {
            "events": len(events),
            "seconds": seconds,
            "events_per_s": len(events) / seconds,
            "events_per_cpu_s": len(events) / max(1e-9, cpu),
        }
    finally:
        await nc.close()


def bench_fold(runs: int, batches: int, replicas: int, profile: Path | None = None) -> dict[str, Any]:
    """One fold round on a fresh embedded stack running only the scheduler (`replicas` processes)."""
    from jetl.cli.demo import wait_ready
    from jetl.stack.embedded import Stack

    tmp = Path(tempfile.mkdtemp(prefix="jetl-cp-"))
    (tmp / "pipelines").mkdir()
    stack = Stack(
        data_dir=tmp / "data",
        pipelines_dir=tmp / "pipelines",
        services=("scheduler",),
        replicas={"scheduler": replicas},
        extra_env={"JETL_LOG_LEVEL": "WARNING", "JETL_CRON_ENABLED": "false"},
    )
    try:
        stack.start()
        asyncio.run(wait_ready(stack))
        result = asyncio.run(fold_round(stack, runs, batches, profile))
        result["backlog"] = asyncio.run(backlog_round(stack, runs, batches))
        return result
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def print_fold(results: dict[int, dict[str, Any]], batches: int) -> None:
    for replicas, r in results.items():
        delays = sorted(r["delay_after_last_load"].values())
        print(
            f"fold, {replicas} scheduler(s): {r['events']} events in {r['seconds']:.2f} s: "
            f"{r['events_per_s']:,.0f} events/s folded (published at {r['published_per_s']:,.0f}/s); "
            f"run.completed {delays[0]:.2f}-{delays[-1]:.2f} s after each run's last batch.loaded; "
            f"{r['events_per_cpu_s']:,.0f} events per scheduler CPU-second; CPU-s "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items())
        )
        b = r["backlog"]
        print(
            f"  a backlog of {b['events']} events (fetches full): folded in {b['seconds']:.2f} s, "
            f"{b['events_per_s']:,.0f} events/s, {b['events_per_cpu_s']:,.0f} per scheduler CPU-second"
        )
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    one = results.get(1)
    if one is not None:
        n = one["events"] / 3
        events_b, state_b = one["sizes"]["bytes:JETL_EVENTS"], one["sizes"]["bytes:KV_JETL_STATE"]
        print(
            f"per 1,000 batches (3 events each): JETL_EVENTS {events_b * 1000 / n / 1e6:.2f} MB, "
            f"state bucket after the runs finished {state_b * 1000 / n / 1e6:.3f} MB"
        )
        best = max(one["events_per_s"], one["backlog"]["events_per_s"])
        ok = "met" if best >= 5000 else "NOT met"
        print(f"goal >= 5,000 events/s with one scheduler: {best:,.0f} ({ok})")
        worst = max(one["delay_after_last_load"].values())
        ok = "met" if worst <= 2.0 else "NOT met"
        print(f"goal: a {batches}-batch run completes within 2 s of its last load: {worst:.2f} s ({ok})")
    if 1 in results and 2 in results:
        gain = results[2]["backlog"]["events_per_s"] / results[1]["backlog"]["events_per_s"]
        print(f"goal >= 1.6x with a second replica (on more cores): {gain:.2f}x on {os.cpu_count()} cores")


async def store_sizes(nc: Any) -> dict[str, float]:
    """Bytes each stream and the state bucket hold now."""
    from jetl.subjects import STATE_BUCKET, STREAMS

    js = nc.jetstream()
    out: dict[str, float] = {}
    for spec in STREAMS.values():
        out[f"bytes:{spec.name}"] = (await js.stream_info(spec.name)).state.bytes
    out[f"bytes:KV_{STATE_BUCKET}"] = (await js.stream_info(f"KV_{STATE_BUCKET}")).state.bytes
    return out


async def fairness_round(stack: Any, small: int) -> dict[str, float]:
    from jetl.cli.demo import with_watchdog
    from jetl.ops.client import JetlClient
    from jetl.settings import JetlSettings

    async def body() -> dict[str, float]:
        async with JetlClient(JetlSettings(nats=stack.operator)) as jc:

            async def timed(pipeline: str) -> float:
                t0 = time.perf_counter()
                req = await jc.request_run(pipeline, force=True)
                state = await jc.wait(pipeline, req.run_id, timeout=1800)
                if state.status != "completed":
                    raise RuntimeError(f"{pipeline} run {state.run_id} ended {state.status}: {state.error}")
                return time.perf_counter() - t0

            for _ in range(3):  # warm-up: each service's one-time costs
                await timed(LATENCY_PIPELINE)
            solo = min([await timed(LATENCY_PIPELINE) for _ in range(3)])
            t0 = time.perf_counter()
            big_req = await jc.request_run(PIPELINE, force=True)
            while True:  # in flight: its first batch reached the destination
                state = await jc.run_state(PIPELINE, big_req.run_id)
                if state is not None and (state.loaded > 0 or state.status in ("completed", "failed")):
                    break
                await asyncio.sleep(0.05)
            behind = await timed(LATENCY_PIPELINE)
            big = await jc.wait(PIPELINE, big_req.run_id, timeout=3600)
            big_s = time.perf_counter() - t0
            await asyncio.sleep(3.0)  # the tracker summarizes finished runs' batch keys in the background
            sizes = await store_sizes(jc.conn)
            return {"solo": solo, "behind": behind, "big": big_s, "big_loaded": big.loaded, **sizes}

    result: dict[str, float] = await with_watchdog(stack, body())
    return result


def bench_fairness(big: int, small: int, batch: int) -> dict[str, float]:
    from jetl.cli.demo import wait_ready
    from jetl.stack.embedded import Stack

    data = BENCH / ".data"
    generate(data / f"orders_{big}.jsonl", big)
    tmp = Path(tempfile.mkdtemp(prefix="jetl-fair-"))
    (tmp / "input").mkdir()
    (tmp / "latency").mkdir()
    os.link(data / f"orders_{big}.jsonl", tmp / "input" / "orders.jsonl")
    generate(tmp / "latency" / "orders.jsonl", small, seed=7)
    stack = Stack(
        data_dir=tmp,
        pipelines_dir=BENCH / "pipelines",
        extra_env={"JETL_LOG_LEVEL": "WARNING", "BENCH_BATCH": str(batch), "JETL_CRON_ENABLED": "false"},
    )
    try:
        stack.start()
        asyncio.run(wait_ready(stack))
        return asyncio.run(fairness_round(stack, small))
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def print_fairness(r: dict[str, float], big: int, small: int, batch: int) -> None:
    goal = 2 * r["solo"] + 1.0
    ok = "met" if r["behind"] <= goal else "NOT met"
    print(
        f"fairness: a {small}-record run took {r['solo']:.2f} s alone and {r['behind']:.2f} s behind a {big:,}-record "
        f"run of another pipeline (which took {r['big']:.1f} s): ratio {r['behind'] / r['solo']:.1f}"
    )
    print(
        f"goal: within 2 x solo + 1 s = {goal:.2f} s (ratio {goal / r['solo']:.1f}): {r['behind']:.2f} s, ratio "
        f"{r['behind'] / r['solo']:.1f} ({ok}); the big run was still in flight: "
        f"{'yes' if r['behind'] < r['big'] else 'no'}"
    )
    records = big + 7 * small
    batches = -(-big // batch) + 7 * -(-small // batch)
    print(f"what the stores hold after {records:,} records in {batches:,} batches ({7 + 1} runs):")
    for k, v in r.items():
        if k.startswith("bytes:"):
            print(
                f"  {k[6:]:<16} {v / 1e6:9.2f} MB   {v * 1e6 / records / 1e6:9.1f} MB per 1M records"
                f"   {v * 1000 / batches / 1e6:8.2f} MB per 1,000 batches"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", nargs="?", choices=["fold", "fairness", "all"], default="all")
    ap.add_argument("--runs", type=int, default=4, help="runs folded side by side (fold)")
    ap.add_argument("--batches", type=int, default=2000, help="batches per run (fold)")
    ap.add_argument("--replicas", default="1,2", help="scheduler replicas to compare (fold)")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy profiles of the scheduler(s) here (fold)")
    ap.add_argument("--big", type=int, default=1_000_000, help="records of the big run (fairness)")
    ap.add_argument("--small", type=int, default=500, help="records of the small run (fairness)")
    ap.add_argument("--batch", type=int, default=5000, help="records per batch of both pipelines (fairness)")
    args = ap.parse_args()
    if args.part in ("fold", "all"):
        results = {int(n): bench_fold(args.runs, args.batches, int(n), args.profile) for n in args.replicas.split(",")}
        print_fold(results, args.batches)
    if args.part in ("fairness", "all"):
        print_fairness(bench_fairness(args.big, args.small, args.batch), args.big, args.small, args.batch)


if __name__ == "__main__":
    main()
