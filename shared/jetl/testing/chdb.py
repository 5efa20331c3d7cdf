"""Read a chdb folder from a separate process (a chdb folder may be open in one process at a time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_SCRIPT = """
import json, sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
r = c.query(sys.argv[2])
print(json.dumps({"columns": list(r.column_names), "rows": [list(x) for x in r.result_rows]}, default=str))
"""


def query(path: Path | str, sql: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Rows of `sql` against the chdb folder at `path`, as dicts (values JSON-converted)."""
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(Path(path).resolve()), sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"chdb query failed: {out.stderr[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]
