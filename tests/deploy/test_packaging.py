"""Each service installs only what its stage needs: the lock's dependency closures and the imports say so."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLICKHOUSE_ONLY = {"chdb", "clickhouse-connect"}


def _closure(package: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Names of every package that installing `package[extras]` pulls in, per uv.lock."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    by_name = {p["name"]: p for p in lock["package"]}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(package, extras)]
    while todo:
        name, wanted = todo.pop()
        entry = by_name[name]
        deps = list(entry.get("dependencies", []))
        for extra in wanted:
            deps += entry["optional-dependencies"][extra]
        for dep in deps:
            key = (dep["name"], tuple(dep.get("extra", ())))
            if key not in seen:
                seen.add(key)
                todo.append(key)
    return {name for name, _ in seen}


def test_the_extractor_installs_http_and_db_but_no_clickhouse() -> None:
    closure = _closure("jetl-extractor")
    assert {"httpx", "sqlalchemy"} <= closure
    assert not closure & CLICKHOUSE_ONLY
    assert "testcontainers" not in closure


def test_the_transformer_installs_no_connector_at_all() -> None:
    closure = _closure("jetl-transformer")
    assert not closure & (CLICKHOUSE_ONLY | {"httpx", "sqlalchemy", "testcontainers"})


def test_the_loader_installs_clickhouse_and_the_workspace_installs_everything() -> None:
    assert _closure("jetl-loader") >= CLICKHOUSE_ONLY
    assert CLICKHOUSE_ONLY | {"httpx", "sqlalchemy", "testcontainers"} <= _closure("jetl-workspace")


@pytest.mark.parametrize("service", ["extractor", "transformer", "scheduler"])
def test_a_service_other_than_the_loader_imports_no_clickhouse_driver(service: str) -> None:
    # create_app discovers ./pipelines, demo_orders (a ClickHouse pipeline) among them
    code = (
        f"import sys, jetl.registry, jetl_{service}.app as a; a.create_app(); "
        "print(sorted(jetl.registry.get_pipeline_registry())); "
        "print(sorted({'chdb', 'clickhouse_connect', 'testcontainers'} & sys.modules.keys()))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    registered, imported = out.stdout.splitlines()[-2:]
    assert "demo_orders" in registered
    assert imported == "[]"
