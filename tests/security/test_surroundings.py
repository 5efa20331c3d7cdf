"""Around the bus: what another local user, or a process that reads others' environments, could take. A stack context
planted in a parent folder is not obeyed (no stranger's pipeline module is imported); metrics listen on loopback;
nats-server starts without the pipelines' secrets in its environment; the data folder, logs and loaded files are
the user's alone. Each attack has its control: the same context, the user's own, is obeyed.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jetl import metrics
from jetl.context import StackContext
from jetl.ops.client import JetlClient
from jetl.settings import JetlSettings
from jetl.stack._process import free_port
from jetl.stack.embedded import NatsServer, Stack
from jetl.testing.pipelines import file_pipeline

SECRET = "pipeline-api-token-0123456789"

STRANGER = """
from pathlib import Path
Path("MARKER").write_text("imported")

def register_pipelines():
    return []
"""


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- a planted stack context ----------------------------------------------------------------------------------------


def plant(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A `.jetl/context.json` in a parent folder whose pipelines folder holds a module that leaves a marker when
    imported; the folder a victim works in below it; the marker."""
    shared, stranger = tmp_path / "shared", tmp_path / "stranger-pipelines"
    stranger.mkdir()
    marker = tmp_path / "imported"
    (stranger / "evil_pipeline.py").write_text(STRANGER.replace("MARKER", str(marker)))
    StackContext(nats_url="nats://127.0.0.1:1", data_dir=shared / ".jetl", pipelines_dir=stranger, password=None).save()
    work = shared / "project" / "src"
    work.mkdir(parents=True)
    return shared / ".jetl" / "context.json", work, marker


def jetl_list(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETL_")}
    return subprocess.run(
        [sys.executable, "-m", "jetl", "list", "--json"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_context_others_may_write_is_not_obeyed(tmp_path: Path) -> None:
    context, work, marker = plant(tmp_path)
    context.chmod(0o666)
    out = jetl_list(work)
    assert not marker.exists()  # the stranger's module was never imported
    assert "ignoring the stack context" in out.stderr and str(context) in out.stderr
    context.chmod(0o600)  # the control: the user's own, owner-only context is obeyed
    jetl_list(work)
    assert marker.read_text() == "imported"


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user's needs root")
def test_a_context_another_user_owns_is_not_obeyed(tmp_path: Path) -> None:
    context, work, marker = plant(tmp_path)
    os.chown(context, 65534, 65534)  # nobody's, owner-only
    out = jetl_list(work)
    assert not marker.exists()
    assert "belongs to another user" in out.stderr


# -- metrics ----------------------------------------------------------------------------------------------------------


def test_metrics_listen_on_loopback_by_default() -> None:
    port = metrics.enable("extractor", free_port(), JetlSettings().metrics_host)
    server = metrics._state["server"]
    assert server.server_address[0] == "127.0.0.1" and port == server.server_address[1]


# -- nats-server's environment, and what the stack writes ----------------------------------------------------------


def test_nats_server_starts_without_the_parents_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_API_TOKEN", SECRET)
    monkeypatch.setenv("JETL_CLICKHOUSE__PASSWORD", SECRET)
    with NatsServer(tmp_path / "nats", memory_limit_mb=256) as server:
        assert server.proc is not None
        env = environ_of(server.proc.pid)
        assert SECRET not in "".join(env.values()) and not any(k.startswith("JETL_") for k in env)
        assert env["GOMEMLIMIT"] == "256MiB"  # what it does need still arrives
        assert umask_of(server.proc.pid) == 0o077
        assert mode(tmp_path / "nats") == 0o700 and mode(tmp_path / "nats" / "nats-server.log") == 0o600


@pytest.mark.integration
def test_the_data_folder_logs_and_loaded_files_are_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_API_TOKEN", SECRET)  # a pipeline's secret: its services need it, nats-server not
    before = os.umask(0o022)  # a usual login umask: what the stack writes must be private anyway
    try:
        check_private(tmp_path)
    finally:
        os.umask(before)


def check_private(tmp_path: Path) -> None:
    inputs, out, pipelines, data = tmp_path / "in", tmp_path / "out", tmp_path / "pipelines", tmp_path / "data"
    inputs.mkdir()
    pipelines.mkdir()
    (inputs / "rows.jsonl").write_text('{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n')
    (pipelines / "files_pipeline.py").write_text(
        file_pipeline("files").replace("INPUT", str(inputs)).replace("OUTPUT", str(out))
    )
    with Stack(data, pipelines) as stack:

        async def run() -> None:
            async with JetlClient(stack.client_settings()) as jc:
                req = await jc.request_run("files")
                state = await jc.wait("files", req.run_id, timeout=120)
                assert state.status == "completed" and state.loaded == 2

        asyncio.run(run())
        assert stack.server is not None and stack.server.proc is not None
        server_env = environ_of(stack.server.proc.pid)
        assert SECRET not in "".join(server_env.values())
        assert not any(k.startswith("JETL_") for k in server_env)  # not even the services' NATS passwords
        loader = stack.procs["loader"].proc
        assert loader is not None and environ_of(loader.pid).get("SHOP_API_TOKEN") == SECRET  # the control
        assert umask_of(loader.pid) == 0o077
        assert mode(data) == 0o700 and mode(data / "logs") == 0o700
        logs = list((data / "logs").iterdir())
        assert logs and all(mode(p) == 0o600 for p in logs)
        loaded = [p for p in out.rglob("*") if p.is_file()]
        assert loaded and all(mode(p) & 0o077 == 0 for p in loaded), [(p, oct(mode(p))) for p in loaded]
        assert all(mode(p) & 0o077 == 0 for p in out.rglob("*") if p.is_dir())
        exposed = [(str(p), oct(mode(p))) for p in data.rglob("*") if mode(p) & 0o077]
        assert exposed == []  # nothing the stack keeps (store, logs, archive, state) is open to other users
