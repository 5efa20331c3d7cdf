"""`jetl migrate` and `jetl deploy` against a real chdb folder, as subprocesses (a chdb folder opens in one process at a
time, and a pytest process may only open one chdb path): apply, re-apply as a no-op, status, and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jetl.testing import chdb
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def jetl(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, Any, str]:
    out = subprocess.run(
        [sys.executable, "-m", "jetl", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        data = json.loads(out.stdout) if out.stdout.strip().startswith("{") else out.stdout
    except json.JSONDecodeError:
        data = out.stdout
    return out.returncode, data, out.stderr


def test_migrate_applies_reapplies_as_noop_reports_status_and_refuses_edits(tmp_path: Path) -> None:
    folder = tmp_path / "migrations" / "clickhouse"
    folder.mkdir(parents=True)
    (folder / "0001_create_orders.sql").write_text(
        "-- orders; the table the loader also creates\n"
        "CREATE TABLE IF NOT EXISTS orders (id Int64, note String DEFAULT 'a;b') ENGINE = MergeTree ORDER BY id;\n"
        "INSERT INTO orders (id) VALUES (1), (2);\n"
    )
    (folder / "0002_orders_view.sql").write_text(
        "CREATE VIEW IF NOT EXISTS orders_count AS SELECT count() AS n FROM orders"
    )
    env = {**os.environ, "JETL_CLICKHOUSE__DSN": f"chdb://{tmp_path / 'chdb'}"}

    code, data, err = jetl("migrate", "--dry-run", "--json", env=env, cwd=tmp_path)
    assert code == 0, err
    assert [(m["version"], m["action"]) for m in data["migrations"]] == [(1, "would apply"), (2, "would apply")]

    code, data, err = jetl("migrate", "--json", env=env, cwd=tmp_path)
    assert code == 0, err
    assert [(m["version"], m["statements"], m["action"]) for m in data["migrations"]] == [
        (1, 2, "applied"),
        (2, 1, "applied"),
    ]

    code, out, err = jetl("migrate", env=env, cwd=tmp_path)  # again: nothing to do, the insert did not run twice
    assert code == 0, err
    assert "nothing to apply" in out

    code, data, err = jetl("migrate", "--status", "--json", env=env, cwd=tmp_path)
    assert code == 0, err
    assert [(m["version"], m["state"]) for m in data["migrations"]] == [(1, "applied"), (2, "applied")]
    assert all(m["applied_at"] for m in data["migrations"])
    assert chdb.query(tmp_path / "chdb", "SELECT n FROM orders_count") == [{"n": 2}]

    # editing an applied migration is refused (exit 1), and so is a misnamed file (exit 2)
    (folder / "0001_create_orders.sql").write_text("CREATE TABLE orders (id Int32) ENGINE = Memory")
    code, _, err = jetl("migrate", env=env, cwd=tmp_path)
    assert code == 1 and "0001_create_orders: file changed after it was applied" in err
    assert "Traceback" not in err
    (folder / "3_bad.sql").write_text("SELECT 1")
    code, _, err = jetl("migrate", "--dry-run", env=env, cwd=tmp_path)
    assert code == 2 and "3_bad.sql: migration files are named NNNN_name.sql" in err


def test_deploy_declares_nats_and_applies_migrations_once(tmp_path: Path, bare_nats: NatsHandle) -> None:
    folder = tmp_path / "migrations" / "clickhouse"
    folder.mkdir(parents=True)
    (folder / "0001_events.sql").write_text(
        "CREATE TABLE IF NOT EXISTS events (id Int64) ENGINE = MergeTree ORDER BY id"
    )
    env = {**os.environ, "JETL_CLICKHOUSE__DSN": f"chdb://{tmp_path / 'chdb'}", "JETL_NATS__URL": bare_nats.url}

    code, data, err = jetl("deploy", "--json", env=env, cwd=tmp_path)
    assert code == 0, err
    actions = {(c["what"], c["name"]): c["action"] for c in data["changes"]}
    assert actions[("stream", "JETL_RUNS")] == "created"
    assert actions[("kv", "JETL_STATE")] == "created"
    assert actions[("migration", "0001_events")] == "applied"

    code, out, err = jetl("deploy", env=env, cwd=tmp_path)
    assert code == 0, err
    assert "nothing to change" in out

    code, _, err = jetl("deploy", env={**env, "JETL_NATS__URL": "nats://127.0.0.1:1"}, cwd=tmp_path)
    assert code == 3 and "cannot reach NATS" in err and "Traceback" not in err
