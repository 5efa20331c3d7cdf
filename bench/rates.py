"""The per-core rates the issue quotes, measured on this machine now, to calibrate the benchmark's figures.

    uv run python bench/rates.py

orjson parse of the job's lines, pydantic validation of a 10k batch (TypedDict, validate_python), insert_arrow
into chdb; records per second of CPU time, best of 5.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import orjson
from pydantic import ConfigDict, TypeAdapter

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import RawOrder as Raw  # noqa: E402
from common import generate  # noqa: E402


def best(fn: object, n: int, reps: int = 5) -> float:
    """Records per CPU second, best of `reps`."""
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()  # type: ignore[operator]
        times.append(time.process_time() - t0)
    return n / min(times)


def main() -> None:
    path = BENCH / ".data" / "orders_100000.jsonl"
    generate(path, 100_000)
    lines = path.read_bytes().splitlines()[:10_000]
    body = b"[" + b",".join(lines) + b"]"
    rows = orjson.loads(body)
    adapter = TypeAdapter(list[Raw], config=ConfigDict(cache_strings="keys"))
    print(f"orjson parse:                {best(lambda: orjson.loads(body), len(lines)):>12,.0f} records/s")
    print(f"pydantic validate_python 10k: {best(lambda: adapter.validate_python(rows), len(lines)):>11,.0f} records/s")
    print(f"pydantic validate_json 10k:   {best(lambda: adapter.validate_json(body), len(lines)):>11,.0f} records/s")
    import clickhouse_connect
    import pyarrow as pa

    valid = adapter.validate_json(body)
    table = pa.table({k: [r[k] for r in valid] for k in ("id", "user", "amount", "country", "payload")})
    with tempfile.TemporaryDirectory() as tmp:
        client = clickhouse_connect.get_client(dsn=f"chdb://{tmp}")
        client.command(
            "CREATE TABLE t (id Int64, user String, amount Float64, country String, payload String) "
            "ENGINE = MergeTree ORDER BY id"
        )
        print(
            f"insert_arrow into chdb:      {best(lambda: client.insert_arrow('t', table), len(lines)):>12,.0f} "
            "records/s"
        )
        client.close()


if __name__ == "__main__":
    main()
