"""The single-process ceiling: the reference job as one plain Python script, with the libraries jetl uses.

Reads the JSONL file in batches, validates each batch with pydantic (one `validate_json` call over the batch
joined into a JSON array), computes the columns, and inserts into ClickHouse on chdb. Prints one JSON line:
rows, seconds, rows/s, peak RSS. `bench/run.py` runs it in a subprocess, so its chdb engine and its memory are
its own.

    uv run python bench/direct.py --input FILE --chdb DIR [--variant arrow|json|rows|noval]

Variants (the default is the fastest with validation; see bench/README.md for the figures):
- arrow: validate_json (TypedDict) -> column lists -> pyarrow arrays -> insert_arrow
- json:  validate_json (TypedDict) -> orjson rows -> ClickHouse parses JSONEachRow itself (raw_insert)
- rows:  validate_json (TypedDict) -> clickhouse-connect column-oriented insert of Python values
- noval: no validation: pyarrow.json reads the batch -> compute -> insert_arrow (a reference, not the ceiling)
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import ConfigDict, TypeAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TABLE, RawOrder, check, generate

COLUMNS = ["id", "ts", "user_id", "amount", "country", "amount_cents"]


def peak_rss_mb() -> float:
    """VmHWM of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ddl(table: str = TABLE) -> str:
    """The same table the jetl ClickHouse loader creates for the bench pipeline's schema."""
    from jetl.loaders.clickhouse import ClickHouseLoader

    sys.path.insert(0, str(Path(__file__).resolve().parent / "pipelines"))
    from bench_pipeline import Order

    return ClickHouseLoader(table, order_by=["id"]).ddl(Order)


def warm_up(client: Any, variant: str) -> None:
    """One-time costs out of the timing, as the jetl services pay them before a run: imports (pyarrow's first
    time-zone-aware datetime imports pandas, ~2 s), schema builds, chdb's first insert."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "warm.jsonl"
        generate(sample, 100, seed=1)
        client.command(ddl(f"{TABLE}_warmup"))
        run(variant, sample, client, 100, table=f"{TABLE}_warmup")
        client.command(f"DROP TABLE {TABLE}_warmup")


def batches(path: Path, size: int) -> Any:
    """Lists of `size` lines (each still ending in a newline, which JSON treats as whitespace)."""
    with open(path, "rb", buffering=1 << 20) as fh:
        while True:
            lines = list(itertools.islice(fh, size))
            if not lines:
                return
            yield lines


def run(variant: str, path: Path, client: Any, size: int, table: str = TABLE) -> int:
    # Values are mostly unique (ids, payloads): pydantic's default of caching every string costs ~25% here.
    adapter: TypeAdapter[list[RawOrder]] = TypeAdapter(list[RawOrder], config=ConfigDict(cache_strings="keys"))
    rows_total = 0
    if variant in ("arrow", "noval"):
        import pyarrow as pa

        schema = pa.schema(
            [
                ("id", pa.int64()),
                ("ts", pa.timestamp("us", tz="UTC")),
                ("user_id", pa.string()),
                ("amount", pa.float64()),
                ("country", pa.string()),
                ("amount_cents", pa.int64()),
            ]
        )
    for n, lines in enumerate(batches(path, size)):
        token = {"insert_deduplication_token": f"direct/{n:06d}"}
        if variant == "noval":
            import pyarrow.compute as pc
            import pyarrow.json as pj

            t = pj.read_json(
                pa.BufferReader(b"".join(lines)),
                parse_options=pj.ParseOptions(
                    explicit_schema=pa.schema(
                        [
                            ("id", pa.int64()),
                            ("ts", pa.timestamp("us", tz="UTC")),
                            ("user", pa.string()),
                            ("amount", pa.float64()),
                            ("country", pa.string()),
                            ("payload", pa.string()),
                        ]
                    )
                ),
            )
            cents = pc.cast(pc.round(pc.multiply(t["amount"], 100)), pa.int64())
            arrow = pa.table([t["id"], t["ts"], t["user"], t["amount"], t["country"], cents], schema=schema)
            client.insert_arrow(table, arrow, settings=token)
            rows_total += arrow.num_rows
            continue
        rows = adapter.validate_json(b"[" + b",".join(lines) + b"]")
        rows_total += len(rows)
        if variant == "json":
            out = [
                {
                    "id": r["id"],
                    "ts": r["ts"],
                    "user_id": r["user"],
                    "amount": r["amount"],
                    "country": r["country"],
                    "amount_cents": round(r["amount"] * 100),
                }
                for r in rows
            ]
            client.raw_insert(
                table,
                COLUMNS,
                insert_block=orjson.dumps(out),
                fmt="JSONEachRow",
                settings={**token, "date_time_input_format": "best_effort"},
            )
            continue
        amounts = [r["amount"] for r in rows]
        cols = [
            [r["id"] for r in rows],
            [r["ts"] for r in rows],
            [r["user"] for r in rows],
            amounts,
            [r["country"] for r in rows],
            [round(a * 100) for a in amounts],
        ]
        if variant == "rows":
            client.insert(table, cols, column_names=COLUMNS, column_oriented=True, settings=token)
        else:
            arrow = pa.Table.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, schema, strict=True)], schema=schema
            )
            client.insert_arrow(table, arrow, settings=token)
    return rows_total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--records", type=int, default=0, help="generate the input first (when missing)")
    ap.add_argument("--chdb", type=Path, required=True, help="a fresh folder for the chdb engine")
    ap.add_argument("--variant", choices=["arrow", "json", "rows", "noval"], default="arrow")
    ap.add_argument("--batch", type=int, default=30_000, help="lines per batch (30k ran best, as for jetl)")
    args = ap.parse_args()
    expected = generate(args.input, args.records) if args.records else None

    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{args.chdb.resolve()}")
    client.command(ddl())
    warm_up(client, args.variant)
    # Start-up objects (modules, schemas) never die: keep the collector from walking them on every pass.
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    c0 = time.process_time()
    rows = run(args.variant, args.input, client, args.batch)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    got = check(client, expected) if expected else None
    client.close()
    print(
        orjson.dumps(
            {
                "variant": args.variant,
                "rows": rows,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "rows_per_s": rows / seconds,
                "peak_rss_mb": peak_rss_mb(),
                "check": list(got) if got else None,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
