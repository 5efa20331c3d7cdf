"""The reference job of the benchmark: its input (generated, seeded), its record models, and the expected result.

The input is 1,000,000 (or `--records`) JSONL lines, one order each:
`id:int, ts:ISO-8601 with a time zone, user:str, amount:float, country:str (10 values), payload:str (40 chars)`.
Generation is deterministic (seeded), so every run of every variant reads the same bytes; the file is cached
beside its expected checksum.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from typing_extensions import TypedDict

COUNTRIES = ["DE", "FR", "NL", "US", "GB", "SE", "ES", "IT", "PL", "JP"]
ZONES = [
    UTC,
    timezone(timedelta(hours=2)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=9)),
]
SEED = 20261125
TABLE = "bench_orders"
PIPELINE = "bench_orders"
LATENCY_PIPELINE = "bench_latency"
LATENCY_RECORDS = 100


@dataclass(frozen=True)
class Expected:
    """What the table must hold after a run: row count and checksums of `amount_cents`."""

    rows: int
    sum_cents: int
    """sum(amount_cents)."""
    weighted: int
    """sum(id * amount_cents) % 2**61: catches a value landing on the wrong row."""


def amount_cents(amount: float) -> int:
    """The computed column, one definition for the generator, the pipeline and the direct script."""
    return round(amount * 100)


def generate(path: Path, n: int, seed: int = SEED) -> Expected:
    """Write `n` records to `path` (JSONL) unless a file with the same parameters is already there."""
    meta = path.with_suffix(".meta.json")
    if path.exists() and meta.exists():
        m = json.loads(meta.read_text())
        if m.get("n") == n and m.get("seed") == seed:
            return Expected(m["rows"], m["sum_cents"], m["weighted"])
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = weighted = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        lines: list[str] = []
        for i in range(1, n + 1):
            ts = (start + timedelta(seconds=i * 7, microseconds=rnd.randrange(1_000_000))).astimezone(
                ZONES[i % len(ZONES)]
            )
            amount = round(rnd.uniform(0.01, 2000.0), 2)
            cents = amount_cents(amount)
            total += cents
            weighted = (weighted + i * cents) % 2**61
            lines.append(
                f'{{"id":{i},"ts":"{ts.isoformat()}","user":"u{rnd.randrange(100_000):06d}",'
                f'"amount":{amount!r},"country":"{COUNTRIES[rnd.randrange(10)]}",'
                f'"payload":"{rnd.getrandbits(160):040x}"}}\n'
            )
            if len(lines) >= 100_000:
                fh.writelines(lines)
                lines.clear()
        fh.writelines(lines)
    tmp.replace(path)
    meta.write_text(json.dumps({"n": n, "seed": seed, "rows": n, "sum_cents": total, "weighted": weighted}))
    return Expected(n, total, weighted)


def check(client: object, expected: Expected) -> tuple[int, int, int]:
    """Read back count and checksums; raise AssertionError when they differ from `expected`."""
    row = client.query(
        f"SELECT count(), sum(amount_cents), "  # type: ignore[attr-defined]
        f"toUInt64(sum(toUInt128(id) * toUInt128(amount_cents)) % 2305843009213693952) "
        f"FROM {TABLE}"
    ).result_rows[0]
    got = (int(row[0]), int(row[1]), int(row[2]))
    want = (expected.rows, expected.sum_cents, expected.weighted)
    if got != want:
        raise AssertionError(f"table {TABLE}: got count/sum/weighted {got}, expected {want}")
    return got


class RawOrder(TypedDict):
    """One input line, as the direct script and the rate probes validate it."""

    id: int
    ts: datetime
    user: str
    amount: float
    country: str
    payload: str
