"""Throughput benchmark: the reference job through the four jetl services, against the single-process ceiling.

    uv run python bench/run.py [--records N] [--latency-runs 200]
    uv run python bench/run.py --sweep extractor=1,2 transformer=1,2,4,8 [--records N] [--latency-runs 50]

- jetl: the embedded stack (nats-server with JetStream, then extractor, transformer, loader and scheduler, each its
  own OS process) runs the `bench_orders` pipeline (bench/pipelines/bench_pipeline.py): from the run request to
  run.completed, i.e. the last batch committed to ClickHouse (chdb) and the ledger settled. Records per second,
  wall time, each process's peak RSS (VmHWM) and the CPU each spent during the run.
- direct: bench/direct.py, the same job as one plain script (same libraries), in a subprocess of its own.
- latency: a 100-record run of the `bench_latency` pipeline through the same four services, p50 and p99.
Every run is checked: count() and two checksums of `amount_cents` in ClickHouse (see bench/common.py).

The last line is `ratio jetl/direct: X.XX` (records per second, jetl over direct).

`--sweep` runs the jetl side once per combination of replica counts (a fresh stack each, the direct script once
before and once after, the better of the two is the ratio's base) and prints a table: records/s, the ratio, each
stage's CPU-s and peak RSS (each process's, below the table), p50 and p99, and a projected ceiling from each stage's
CPU cost per record (`projected_ceiling`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import LATENCY_PIPELINE, LATENCY_RECORDS, PIPELINE, Expected, check, generate  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, field: str) -> float:
    """A `VmHWM`-style field of /proc/<pid>/status, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def cpu_wait_seconds(pid: int) -> float:
    """Time the threads of a process spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat, second
    field): what the stages lose to each other on a machine with fewer cores than busy processes."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def run_direct(data: Path, records: int, variant: str) -> dict[str, Any]:
    """bench/direct.py in a subprocess, on a fresh chdb folder."""
    chdb = data / "direct-chdb"
    shutil.rmtree(chdb, ignore_errors=True)
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "direct.py"),
            "--input",
            str(data / f"orders_{records}.jsonl"),
            "--records",
            str(records),
            "--chdb",
            str(chdb),
            "--variant",
            variant,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(chdb, ignore_errors=True)
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


WARM_UP_RUNS = 3
"""Latency-pipeline runs before anything is timed: each service's first batch pays one-time costs (imports such as
pyarrow's of pandas, ~2 s; the chdb table; schema builds), as a long-running service pays them once."""


async def run_jetl(url: str, stack: Any, latency_runs: int, profile: Path | None) -> dict[str, Any]:
    """Warm-up runs, the latency runs, then the throughput run."""
    from jetl.cli.demo import with_watchdog
    from jetl.ops.client import JetlClient
    from jetl.settings import JetlSettings

    async def one(jc: Any, pipeline: str, timeout: float) -> Any:
        req = await jc.request_run(pipeline, force=True)
        return await jc.wait(pipeline, req.run_id, timeout=timeout)

    async def body() -> dict[str, Any]:
        async with JetlClient(JetlSettings(nats=stack.operator)) as jc:
            latencies: list[float] = []
            for i in range(WARM_UP_RUNS + latency_runs):
                t0 = time.perf_counter()
                state = await one(jc, LATENCY_PIPELINE, 60)
                if i >= WARM_UP_RUNS:
                    latencies.append(time.perf_counter() - t0)
                if state.status != "completed" or state.counts()["loaded"] != LATENCY_RECORDS:
                    raise RuntimeError(f"latency run {state.run_id} ended {state.status}: {state.counts()}")
            pids = {name: p.proc.pid for name, p in stack.procs.items() if p.proc is not None}
            if stack.server is not None and stack.server.proc is not None:
                pids["nats-server"] = stack.server.proc.pid
            spies = []
            if profile is not None:
                import spy

                spies = spy.start({k: v for k, v in pids.items() if k != "nats-server"}, profile)
                await asyncio.sleep(1.0)  # py-spy attaches
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            wait0 = {name: cpu_wait_seconds(pid) for name, pid in pids.items()}
            t0 = time.perf_counter()
            state = await one(jc, PIPELINE, 1800)
            seconds = time.perf_counter() - t0
            cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
            wait = {name: cpu_wait_seconds(pid) - wait0[name] for name, pid in pids.items()}
            if spies:
                spy.stop(spies)
            rss = {name: proc_status(pid, "VmHWM") for name, pid in pids.items()}
            return {
                "seconds": seconds,
                "state": state,
                "latencies": latencies,
                "cpu": cpu,
                "cpu_wait": wait,
                "rss": rss,
            }

    result: dict[str, Any] = await with_watchdog(stack, body())
    return result


def bench_jetl(
    data: Path,
    records: int,
    latency_runs: int,
    expected: Expected,
    keep: bool,
    transformers: int = 1,
    profile: Path | None = None,
    extractors: int = 1,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start the embedded stack on a fresh data folder, run, stop, then check the table. With `extractors` > 1 the
    input splits into twice as many byte ranges (partitions) as there are extractor replicas."""
    from jetl.cli.demo import wait_ready
    from jetl.stack.embedded import Stack

    run_dir = data / "stack"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "input").mkdir(parents=True)
    (run_dir / "latency").mkdir(parents=True)
    os.link(data / f"orders_{records}.jsonl", run_dir / "input" / "orders.jsonl")
    generate(run_dir / "latency" / "orders.jsonl", LATENCY_RECORDS, seed=7)
    env = {"JETL_LOG_LEVEL": "WARNING", **(env or {})}
    if extractors > 1:
        size = (run_dir / "input" / "orders.jsonl").stat().st_size
        env["BENCH_PARTITION_BYTES"] = str(size // (2 * extractors) + 1)
    stack = Stack(
        data_dir=run_dir,
        pipelines_dir=BENCH / "pipelines",
        extra_env=env,
        # replicas bind the same durable consumer (jetl up --scale)
        replicas={"transformer": transformers, "extractor": extractors},
    )
    try:
        stack.start()
        url = stack.nats_url or ""
        asyncio.run(wait_ready(stack))
        result = asyncio.run(run_jetl(url, stack, latency_runs, profile))
        stack.check()
    finally:
        stack.stop()
    state = result["state"]
    if state.status != "completed":
        raise RuntimeError(f"run {state.run_id} ended {state.status}: {state.error}")
    from jetl.loaders.clickhouse import close_clients, get_client

    client = get_client(f"chdb://{(run_dir / 'chdb').resolve()}")
    try:
        result["check"] = check(client, expected)
    finally:
        close_clients()
    result["counts"] = state.counts()
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


STAGES = ("extractor", "transformer", "loader", "scheduler", "nats-server")
ONE_PROCESS = ("loader", "scheduler")
"""Stages that run as one process in the embedded stack (the loader because chdb opens its folder in one process
only; the scheduler's tracker is one consumer): they get at most one core however many the machine has."""


def stage_of(process: str) -> str:
    """`transformer3` -> `transformer`."""
    return process.rstrip("0123456789")


def per_stage(values: dict[str, float], how: Any = sum) -> dict[str, float]:
    """Per-process figures folded per stage (CPU: summed over replicas; RSS: the largest replica)."""
    out: dict[str, list[float]] = {}
    for name, v in values.items():
        out.setdefault(stage_of(name), []).append(v)
    return {k: how(v) for k, v in out.items()}


def projected_ceiling(
    cpu: dict[str, float], records: int, cores: int, one_process: tuple[str, ...] = ONE_PROCESS
) -> tuple[float, str]:
    """(records/s, binding stage) on `cores` cores from each stage's CPU-s per record: every stage is bounded by the
    cores it can use (all of them for a stage that scales out, one for a stage in `one_process`) over its CPU-s per
    record, and all stages together by the machine's cores over their summed CPU-s per record. With a ClickHouse
    server instead of chdb, loader replicas share the work (`one_process=("scheduler",)`): that projection counts
    the loader's chdb CPU per record as if it scaled, an upper bound on what the client side costs."""
    stage_cpu = per_stage(cpu)
    bounds = {
        stage: (1 if stage in one_process else cores) / (seconds / records)
        for stage, seconds in stage_cpu.items()
        if seconds > 0
    }
    bounds["all stages"] = cores / (sum(stage_cpu.values()) / records)
    stage = min(bounds, key=lambda k: bounds[k])
    return bounds[stage], stage


def parse_sweep(items: list[str]) -> list[dict[str, int]]:
    """`["extractor=1,2", "transformer=1,2"]` -> every combination, as replicas per service."""
    axes: dict[str, list[int]] = {}
    for item in items:
        name, _, counts = item.partition("=")
        if name not in ("extractor", "transformer") or not counts:
            raise ValueError(f"--sweep takes extractor=N,.. and transformer=N,..; not {item!r}")
        axes[name] = [int(c) for c in counts.split(",")]
        if any(c < 1 for c in axes[name]):
            raise ValueError(f"{item}: replica counts are at least 1")
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]


def sweep(args: argparse.Namespace, expected: Expected) -> None:
    """One jetl run per point of the sweep; the table, then each point's processes."""
    before = run_direct(args.data, args.records, args.direct_variant)
    print(f"direct (before): {before['rows_per_s']:,.0f} records/s, CPU s {before['cpu_seconds']:.2f}", flush=True)
    rows = []
    for point in parse_sweep(args.sweep):
        e, t = point.get("extractor", 1), point.get("transformer", 1)
        load0 = os.getloadavg()[0]
        r = bench_jetl(args.data, args.records, args.latency_runs, expected, False, t, extractors=e, env=args.env)
        r.update(extractors=e, transformers=t, load=load0)
        rows.append(r)
        print(f"  extractor={e} transformer={t}: {args.records / r['seconds']:,.0f} records/s", flush=True)
    after = run_direct(args.data, args.records, args.direct_variant)
    print(f"direct (after): {after['rows_per_s']:,.0f} records/s, CPU s {after['cpu_seconds']:.2f}")
    direct = max(before, after, key=lambda d: d["rows_per_s"])
    print(
        f"\n{args.records:,} records; ratio against the better direct run ({direct['rows_per_s']:,.0f} records/s, "
        f"{direct['cpu_seconds'] / args.records * 1e6:.2f} us CPU a record); CPU-s summed over a stage's replicas, "
        "peak RSS the largest replica's; ceiling = cores / CPU-s per record of the stage that binds first\n"
    )
    print(
        "| extractors | transformers | records/s | ratio | CPU-s ext / tra / loa / sch / nats | CPU us a record "
        "| peak RSS MB ext / tra / loa / sch / nats | p50 / p99 ms | ceiling 2 cores | ceiling 16 cores "
        "| ceiling 16 cores, loaders scaled (ClickHouse server) | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu, rss = per_stage(r["cpu"]), per_stage(r["rss"], max)
        lat = [x * 1000 for x in r["latencies"]]
        c2, s2 = projected_ceiling(r["cpu"], args.records, 2)
        c16, s16 = projected_ceiling(r["cpu"], args.records, 16)
        cs, ss = projected_ceiling(r["cpu"], args.records, 16, one_process=("scheduler",))
        rate = args.records / r["seconds"]
        print(
            f"| {r['extractors']} | {r['transformers']} | {rate:,.0f} | {rate / direct['rows_per_s']:.2f} | "
            + " / ".join(f"{cpu.get(s, 0):.2f}" for s in STAGES)
            + f" | {sum(cpu.values()) / args.records * 1e6:.2f} | "
            + " / ".join(f"{rss.get(s, 0):.0f}" for s in STAGES)
            + f" | {statistics.median(lat):.0f} / {percentile(lat, 99):.0f} | {c2:,.0f} ({s2}) | {c16:,.0f} ({s16})"
            f" | {cs:,.0f} ({ss}) | {r['load']:.1f} |"
        )
    print("\nper process (CPU s, peak RSS MB):")
    for r in rows:
        print(
            f"  extractor={r['extractors']} transformer={r['transformers']}: "
            + "  ".join(f"{k} {r['cpu'][k]:.2f}/{r['rss'][k]:.0f}" for k in r["cpu"])
        )
    print(f"checks:  count and amount_cents checksums match in every run ({expected.rows:,} rows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000, help="records in the reference job")
    ap.add_argument("--latency-runs", type=int, default=200, help="100-record runs timed for p50/p99")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure direct and jetl this many times each (alternating, a fresh stack each time) and "
        "keep the best of each: on a shared machine the best is the least disturbed",
    )
    ap.add_argument(
        "--transformers",
        type=int,
        default=1,
        help="transformer replicas (the design's scaling model; the reference figure is 1)",
    )
    ap.add_argument(
        "--sweep",
        nargs="+",
        metavar="SERVICE=N,N",
        help="run every combination of replica counts, e.g. extractor=1,2 transformer=1,2,4,8, and print the table",
    )
    ap.add_argument(
        "--env",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of every service (settings to compare, e.g. JETL_FETCH_TIMEOUT=0.1)",
    )
    ap.add_argument("--profile", type=Path, help="py-spy every service during the throughput run, into this folder")
    ap.add_argument("--direct-variant", default="arrow", choices=["arrow", "json", "rows", "noval"])
    ap.add_argument("--data", type=Path, default=BENCH / ".data", help="where inputs and run folders go")
    ap.add_argument("--keep", action="store_true", help="keep the stack's data folder (logs, chdb) after the run")
    args = ap.parse_args()
    args.env = dict(item.partition("=")[::2] for item in args.env)
    if args.latency_runs < 1 or args.repeat < 1 or args.transformers < 1:
        ap.error("--latency-runs, --repeat and --transformers must be at least 1")

    args.data.mkdir(parents=True, exist_ok=True)
    print(f"input: {args.records:,} records (generating unless cached in {args.data})", flush=True)
    expected = generate(args.data / f"orders_{args.records}.jsonl", args.records)
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} CPUs, {gib:.0f} GiB, load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.sweep:
        try:
            parse_sweep(args.sweep)
        except ValueError as exc:
            ap.error(str(exc))
        sweep(args, expected)
        return

    directs, jetls = [], []
    for i in range(args.repeat):
        directs.append(run_direct(args.data, args.records, args.direct_variant))
        jetls.append(
            bench_jetl(
                args.data,
                args.records,
                args.latency_runs if i == 0 else 1,
                expected,
                args.keep,
                args.transformers,
                env=args.env,
            )
        )
        if args.repeat > 1:
            print(
                f"  round {i + 1}: direct {directs[-1]['rows_per_s']:,.0f} records/s, "
                f"jetl {args.records / jetls[-1]['seconds']:,.0f} records/s, "
                f"ratio {args.records / jetls[-1]['seconds'] / directs[-1]['rows_per_s']:.2f}",
                flush=True,
            )
    direct = max(directs, key=lambda d: d["rows_per_s"])
    jetl = min(jetls, key=lambda j: j["seconds"])
    latencies = jetls[0]["latencies"]

    if args.profile is not None:  # a run of its own: sampling slows the services down
        import spy

        profiled = bench_jetl(args.data, args.records, 1, expected, False, args.transformers, args.profile)
        summary = spy.summarise(args.profile)
        (args.profile / "summary.txt").write_text(summary + "\n")
        print(
            f"profile (py-spy at {spy.RATE} Hz, a separate run of {profiled['seconds']:.2f} s; "
            f"stacks in {args.profile}):\n{summary}"
        )
    rate = args.records / jetl["seconds"]
    shape = "4 services" if args.transformers == 1 else f"4 services, {args.transformers} transformer replicas"
    print(
        f"jetl:    {args.records:,} records in {jetl['seconds']:.2f} s = {rate:,.0f} records/s "
        f"({shape}, over nats-server; counts {jetl['counts']})"
    )
    print("  peak RSS MB: " + "  ".join(f"{k} {v:.0f}" for k, v in jetl["rss"].items()))
    print("  CPU s during the run: " + "  ".join(f"{k} {v:.2f}" for k, v in jetl["cpu"].items()))
    print("  s waiting for a CPU: " + "  ".join(f"{k} {v:.2f}" for k, v in jetl["cpu_wait"].items()))
    print(
        f"direct:  {direct['rows']:,} records in {direct['seconds']:.2f} s = {direct['rows_per_s']:,.0f} records/s "
        f"(one process, variant {direct['variant']}); peak RSS MB {direct['peak_rss_mb']:.0f}; "
        f"CPU s {direct['cpu_seconds']:.2f}"
    )
    lat = [x * 1000 for x in latencies]
    print(
        f"latency: {LATENCY_RECORDS} records end to end (run request to run.completed), {len(lat)} runs: "
        f"p50 {statistics.median(lat):.1f} ms, p99 {percentile(lat, 99):.1f} ms"
    )
    print(f"checks:  count and amount_cents checksums match ({jetl['check'][0]:,} rows)")
    print(f"ratio jetl/direct: {rate / direct['rows_per_s']:.2f}")


if __name__ == "__main__":
    main()
