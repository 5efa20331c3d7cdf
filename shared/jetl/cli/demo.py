"""`jetl demo`: sample data, the embedded stack, one run of `demo_orders`, and a summary read back."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from jetl.cli._app import follow
from jetl.cli._app import progress as progress_bar

if TYPE_CHECKING:
    from jetl.settings import JetlSettings
    from jetl.stack.embedded import Stack


PIPELINE = "demo_orders"
COUNTRIES = ["DE", "FR", "NL", "US", "GB", "SE", "ES", "IT", "PL", "JP"]


def write_sample(path: Path, n: int, seed: int = 7) -> int:
    """Write `n` sample orders as JSONL, a handful deliberately bad; returns how many lines are bad."""
    rnd = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    bad = 0
    with open(path, "wb") as fh:
        for i in range(1, n + 1):
            rec: dict[str, Any] = {
                "order_id": i,
                "customer": f"c{rnd.randint(1, 500):04d}",
                "country": rnd.choice(COUNTRIES),
                "amount": round(rnd.uniform(1, 500), 2),
                "ordered_at": (start + timedelta(minutes=i)).isoformat(),
                "status": "test" if i % 97 == 0 else "paid",
            }
            if i % 401 == 0:
                rec["amount"] = "twelve euros"  # wrong type
                bad += 1
            elif i % 577 == 0:
                del rec["customer"]  # missing field
                bad += 1
            elif i % 733 == 0:
                fh.write(b'{"order_id": ' + str(i).encode() + b', "customer": \n')  # malformed JSON
                bad += 1
                continue
            fh.write(orjson.dumps(rec) + b"\n")
    return bad


async def watch_stack(stack: Stack) -> None:
    """Raise as soon as a service process dies (with the tail of its log), instead of waiting out a timeout."""
    while True:
        stack.check()
        await asyncio.sleep(0.5)


async def wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    """Until every service of the stack answers its health request (its consumers are started by then); raises as
    soon as one dies."""
    from jetl import subjects
    from jetl.bus import connect

    watchdog = asyncio.create_task(watch_stack(stack))
    nc = await connect(stack.operator)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        pending = set(stack.services)
        while pending:
            if watchdog.done():
                watchdog.result()
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"services not ready after {timeout:.0f}s: {sorted(pending)}")
            for name in list(pending):
                try:
                    await nc.request(subjects.control(name, "health"), b"{}", timeout=0.5)
                    pending.discard(name)
                except Exception:
                    await asyncio.sleep(0.1)
    finally:
        watchdog.cancel()
        await nc.close()


async def with_watchdog(stack: Stack, coro: Any) -> Any:
    """Await `coro`, failing fast if the stack dies meanwhile."""
    watchdog = asyncio.create_task(watch_stack(stack))
    work = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({watchdog, work}, return_when=asyncio.FIRST_COMPLETED)
    watchdog.cancel()
    if work not in done:
        work.cancel()
        watchdog.result()
    return work.result()


async def _run(s: JetlSettings, timeout: float, progress: bool) -> tuple[Any, list[Any]]:
    from jetl.ops.client import JetlClient

    async with JetlClient(s) as jc:
        req = await jc.request_run(PIPELINE)
        with progress_bar(progress, f"run {req.run_id}", None) as update:
            state = await jc.wait(PIPELINE, req.run_id, timeout=timeout, on_event=follow(update))
        dls = await jc.dead_letters(PIPELINE)
    return state, dls


def run_demo(
    data_dir: Path, pipelines_dir: Path, records: int, *, progress: bool = True, timeout: float = 300.0
) -> dict[str, Any]:
    """Run the demo and return its summary."""
    from jetl.errors import JetlError
    from jetl.stack.embedded import Stack

    write_sample(data_dir / "input" / "orders.jsonl", records)
    stack = Stack(data_dir=data_dir, pipelines_dir=pipelines_dir)
    try:
        stack.start()
        state, dls = asyncio.run(with_watchdog(stack, _run(stack.client_settings(), timeout, progress)))
        stack.check()
    finally:
        stack.stop()
    if state.status != "completed":
        raise JetlError(f"demo run {state.run_id} ended {state.status}: {state.error}")
    # The loader process has exited, so this process may open the chdb folder now.
    from jetl.loaders.clickhouse import close_clients, get_client

    client = get_client(f"chdb://{(data_dir / 'chdb').resolve()}")
    try:
        rows = int(client.command("SELECT count() FROM demo_orders"))
        sample = client.query("SELECT * EXCEPT (_jetl_batch_id) FROM demo_orders ORDER BY order_id LIMIT 5")
        sample_rows = [dict(zip(sample.column_names, r, strict=True)) for r in sample.result_rows]
    finally:
        close_clients()
    rejections = [
        f"{r.get('origin') or dl.batch_id}: {r.get('field') or ''} {r.get('message')}".strip()
        for dl in dls
        for r in dl.records
    ]
    return {
        "pipeline": PIPELINE,
        "run_id": state.run_id,
        "status": state.status,
        "counts": state.counts(),
        "reconciles": state.reconciles,
        "clickhouse_rows": rows,
        "dead_letters": sum(len(dl.records) for dl in dls),
        "rejections": rejections,
        "sample_rows": sample_rows,
        # the demo's stack has stopped; this brings it back on the same data, for the dashboard to show the run
        "dashboard": (
            f"jetl up --data-dir {data_dir}   then, in another shell, as the operator (docs/security.md): "
            "jetl ui   (http://127.0.0.1:8420)"
        ),
    }
