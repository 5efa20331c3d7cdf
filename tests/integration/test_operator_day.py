"""The operator's day, as a user sees it: `jetl up` in one shell, commands in another with no export.

One `jetl up` (a subprocess, cwd a temp project) and commands from other subprocesses in a subfolder: they find the
stack through its context; a pipeline whose module raises at start-up is skipped while the others run, and
`jetl run` of it says why; a service killed under `jetl up` is restarted (its crash printed with its own log lines,
the restart counted by `jetl health`) and the next run completes; log files hold no ANSI codes; a second `jetl up`
keeps the port. And the decoy: a second NATS with JetStream and no jetl deployment is never written to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jetl.cli import app
from jetl.context import read_context
from jetl.testing.pipelines import file_pipeline
from jetl.testing.servers import NatsHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = file_pipeline("good", source="INPUT")

EVIL = """
import os

def register_pipelines():
    return os.environ["JETL_TEST_SECRET_THAT_IS_NOT_SET"]
"""


def clean_env() -> dict[str, str]:
    """The environment of a new shell: no JETL_* variable (nothing exported)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JETL_")} | {"COLUMNS": "80"}


def jetl(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`jetl ARGS` as a user types it in another shell."""
    return subprocess.run(
        [sys.executable, "-m", "jetl", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with a good and an evil pipeline and a subfolder to work from."""
    inputs, output = tmp_path / "input", tmp_path / "output"
    inputs.mkdir()
    (inputs / "rows.jsonl").write_text("".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in range(50)))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "good_pipeline.py").write_text(GOOD.replace("INPUT", str(inputs)).replace("OUTPUT", str(output)))
    (pipelines / "evil_pipeline.py").write_text(EVIL)
    (tmp_path / "src" / "deep").mkdir(parents=True)
    return tmp_path


class Up:
    """`jetl up` as a subprocess, its output collected in a file."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.out = project / "up.out"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jetl", "up"],
            cwd=project,
            env=clean_env(),
            stdout=self.out.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.context = project / ".jetl" / "context.json"
        self.wait_for(lambda: self.context.exists() and "services:" in self.text(), 60, "jetl up to start")

    def text(self) -> str:
        """What `jetl up` printed so far."""
        return self.out.read_text(errors="replace")

    def wait_for(self, cond: Any, timeout: float, what: str) -> None:
        """Wait until `cond()`, failing with what `jetl up` printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            assert self.proc.poll() is None, f"jetl up exited {self.proc.returncode}:\n{self.text()}"
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; jetl up printed:\n{self.text()}")

    def stop(self) -> None:
        """Ctrl-C."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def up(project: Path) -> Iterator[Up]:
    """A running `jetl up` in the project."""
    stack = Up(project)
    try:
        yield stack
    finally:
        stack.stop()


def health(cwd: Path) -> dict[str, Any]:
    """`jetl health --json` (it exits 1 while something fails: the evil module does)."""
    result = jetl("health", "--json", cwd=cwd)
    assert result.returncode in (0, 1), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def row(checks: dict[str, Any], check: str, name: str) -> dict[str, Any] | None:
    """The health row of one check, if any."""
    return next((c for c in checks["checks"] if c["check"] == check and c["name"].endswith(name)), None)


def test_a_second_shell_finds_the_stack_and_survives_a_broken_module_and_a_dead_service(project: Path, up: Up) -> None:
    here = project / "src" / "deep"
    out = up.text()
    assert "export" not in out and "--context" in out  # how another shell finds it, without an export

    # every service started, skipping the evil module with its file and line
    def all_up() -> bool:
        h = health(here)
        return all((r := row(h, "service", s)) is not None and r["status"] == "ok" for s in ("extractor", "loader"))

    up.wait_for(all_up, 90, "the services' heartbeats")
    evil = row(health(here), "module", "evil_pipeline.py")
    assert evil is not None and evil["status"] == "fail" and "KeyError" in evil["detail"]

    # a run from a subfolder, nothing exported: found through .jetl/context.json in a parent folder
    result = jetl("run", "good", "--json", cwd=here)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["loaded"] == 50

    # the broken pipeline: exit 2, why, and no run requested
    result = jetl("run", "evil", cwd=here)
    assert result.returncode == 2
    assert "pipeline 'evil' failed to load:" in result.stderr and "evil_pipeline.py:5" in result.stderr
    assert "KeyError" in result.stderr and "Traceback" not in result.stderr
    result = jetl("run", "nonexistent", cwd=here)
    assert result.returncode == 2 and "no pipeline named 'nonexistent'" in result.stderr
    status = json.loads(jetl("status", "--json", cwd=here).stdout)
    assert {r["pipeline"] for r in status} == {"good"}  # neither left a run behind

    # --no-wait gives the run id
    result = jetl("run", "good", "--no-wait", "--json", cwd=here)
    assert result.returncode == 0 and json.loads(result.stdout)["run_id"].startswith("good-")

    # kill the transformer: jetl up restarts it, says so with its own log lines, and the next run completes
    victim = next(r for r in health(here)["checks"] if r["check"] == "service" and r["name"] == "transformer")
    pid = int(victim["detail"].split(":")[-1].split(",")[0].split(";")[0])
    os.kill(pid, signal.SIGKILL)
    up.wait_for(lambda: "service transformer exited with code -9" in up.text(), 30, "the crash report")
    tail = up.text().split("service transformer exited with code -9", 1)[1]
    assert "service started" in tail  # its own log, from this start
    result = jetl("run", "good", "--json", cwd=here)
    assert result.returncode == 0, result.stdout + result.stderr

    def restart_counted() -> bool:
        r = row(health(here), "service", "transformer")
        return r is not None and r["status"] == "ok" and "restarted 1 time(s)" in r["detail"]

    up.wait_for(restart_counted, 30, "jetl health to count the restart")

    # log files are plain text
    logs = list((project / ".jetl" / "logs").glob("*.log"))
    assert logs and all("\x1b[" not in p.read_text(errors="replace") for p in logs)

    # a second start keeps the port
    port = read_context(up.context).port
    up.stop()
    again = Up(project)
    try:
        assert read_context(again.context).port == port
    finally:
        again.stop()


def test_piped_output_is_tsv_and_never_cut(project: Path, up: Up) -> None:
    result = jetl("run", "good", cwd=project)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 30
    while True:  # the tracker folds the run into the state bucket just after it completes
        lines = jetl("status", cwd=project).stdout.splitlines()
        if any(line.startswith("good/good-") for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(line.startswith("run\t") for line in lines), lines
    header = next(line for line in lines if line.startswith("run\t"))
    row_ = next(line for line in lines if line.startswith("good/good-"))
    assert len(header.split("\t")) == len(row_.split("\t")) == 11
    assert "…" not in "\n".join(lines)


def test_nats_unreachable_is_one_line_and_exit_3(project: Path) -> None:
    env = clean_env() | {"JETL_NATS__URL": "nats://127.0.0.1:9"}
    for args in (("status",), ("run", "good"), ("dlq", "list", "good"), ("health",)):
        result = jetl(*args, cwd=project, env=env, timeout=30)
        assert result.returncode == 3, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith("error: cannot reach NATS"), args


def test_the_decoy_nats_is_never_touched(
    project: Path, up: Up, bare_nats: NatsHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second nats-server with JetStream, holding no jetl deployment: with the context set, every command goes
    to the stack; pointed at the decoy, a command fails fast with exit 3 and creates nothing there."""
    import asyncio

    from nats import connect

    async def streams() -> list[str]:
        nc = await connect(bare_nats.url)
        try:
            return [s.config.name or "" async for s in _iter(await nc.jetstream().streams_info())]
        finally:
            await nc.close()

    async def _iter(items: list[Any]) -> Any:
        for i in items:
            yield i

    here = project / "src"
    monkeypatch.chdir(here)
    for key in [k for k in os.environ if k.startswith("JETL_")]:
        monkeypatch.delenv(key)
    runner = CliRunner()
    commands = (("status",), ("run", "good"), ("dlq", "list", "good"), ("logs", "good-x"), ("audit", "good-x"))
    for args in commands:
        with_context = runner.invoke(app, list(args))  # the context in .jetl/ above: the stack, not the decoy
        assert with_context.exit_code in (0, 1, 2), (args, with_context.output)  # reached it (no such run: 1 or 2)
        started = time.monotonic()  # in process: the CLI's own time, not Python's start-up
        result = runner.invoke(app, list(args), env={"JETL_NATS__URL": bare_nats.url})
        took = time.monotonic() - started
        assert result.exit_code == 3, (args, result.output)
        assert f"this NATS at {bare_nats.url} has no jetl deployment" in result.output, args
        assert took < 2.0, (args, took)
    assert asyncio.run(streams()) == []


def test_a_killed_nats_server_is_restarted_and_the_next_run_completes(project: Path, up: Up) -> None:
    here = project / "src" / "deep"
    first = jetl("run", "good", "--json", cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    # the embedded server runs from its config in the data folder; SIGKILL it as a crash would
    conf = project / ".jetl" / "nats" / "nats.conf"
    found = subprocess.run(["pgrep", "-f", "--", str(conf)], capture_output=True, text=True).stdout.split()
    assert len(found) == 1, found
    os.kill(int(found[0]), signal.SIGKILL)
    up.wait_for(lambda: "nats-server exited with code -9" in up.text(), 30, "the server's crash report")
    up.wait_for(
        lambda: len(subprocess.run(["pgrep", "-f", "--", str(conf)], capture_output=True).stdout.split()) == 1,
        30,
        "the server to be started again",
    )
    # the services reconnect to the server on its port and store: a new run completes, and the first is still known
    (project / "input" / "more.jsonl").write_text(
        "".join(json.dumps({"id": i, "name": f"m{i}"}) + "\n" for i in range(50))
    )
    second = jetl("run", "good", "--json", cwd=here, timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout)["loaded"] == 50
    status = json.loads(jetl("status", "--json", cwd=here).stdout)
    assert {r["run_id"] for r in status} >= {json.loads(first.stdout)["run_id"], json.loads(second.stdout)["run_id"]}
    assert up.proc.poll() is None  # jetl up is still in charge
