"""A full disk under the JetStream store of `jetl up`, survived with no hand on it.

The stack's store folder (`<data>/nats/js`) is a 64 MB tmpfs; a filler file leaves a few MB, and a run's batches
fill the rest. nats-server then stops answering publishes to the stream that hit it ("no space left on device" in
its log) until restarted. `jetl up` says so, `jetl health` reports it while it waits for room (and the services
report the stream that does not answer), past the point where a publish used to give up; the filler is deleted,
the supervisor restarts nats-server on its port and store, and the run completes with exact counts and a
reconciled ledger. Needs root for `mount` (these tests run as root): fails under CI=true without it, skips otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetl.testing.pipelines import file_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 12_000
PAD = "x" * 900  # ~1 KB a record: ROWS fill ~12 MB of JETL_RAW (and as much of JETL_CLEAN while in flight)
LEFT_MB = 6
"""Free MB the filler leaves on the store's file system before the run."""


def clean_env() -> dict[str, str]:
    """A new shell's environment (nothing exported), with the restart margin below what deleting the filler frees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETL_")}
    return env | {"COLUMNS": "400", "NO_COLOR": "1", "JETL_EMBEDDED_NATS__RESTART_FREE_MB": "16"}


def jetl(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`jetl ARGS` from another shell."""
    return subprocess.run(
        [sys.executable, "-m", "jetl", *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def wait_for(cond: Any, timeout: float, what: str, said: Any) -> float:
    """Wait until `cond()`; the seconds it took. Fails with what `said()` returns (jetl up's output)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; jetl up printed:\n{said()}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    """`<project>/.jetl/nats/js` as a 64 MB tmpfs, unmounted after the test."""
    js = tmp_path / ".jetl" / "nats" / "js"
    js.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(js)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        why = f"cannot mount a tmpfs (needs root): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield js
    finally:
        subprocess.run(["umount", "-l", str(js)], check=False)


def test_a_full_store_disk_pauses_and_resumes_by_itself(tmp_path: Path, store: Path) -> None:
    inputs, output, pipelines = tmp_path / "input", tmp_path / "output", tmp_path / "pipelines"
    inputs.mkdir()
    pipelines.mkdir()
    (pipelines / "fill_pipeline.py").write_text(
        file_pipeline("fill", source="INPUT/*.jsonl", batch_size=250)
        .replace("INPUT", str(inputs))
        .replace("OUTPUT", str(output))
    )
    (inputs / "rows.jsonl").write_text("".join(json.dumps({"id": i, "name": f"{PAD}{i}"}) + "\n" for i in range(ROWS)))
    out = tmp_path / "up.out"
    argv = [sys.executable, "-m", "jetl", "up"]
    up = subprocess.Popen(argv, cwd=tmp_path, env=clean_env(), stdout=out.open("w"), stderr=subprocess.STDOUT)
    said = lambda: out.read_text(errors="replace")  # noqa: E731
    run: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: "services:" in said(), 60, "jetl up to start", said)

        def services_up() -> bool:
            h = jetl("health", "--json", cwd=tmp_path)
            rows = json.loads(h.stdout)["checks"] if h.stdout.startswith("{") else []
            return all(any(r["name"] == s and r["status"] == "ok" for r in rows) for s in ("extractor", "loader"))

        wait_for(services_up, 90, "the services' heartbeats", said)
        free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
        filler = store / "filler"
        filler.write_bytes(b"\0" * (free - LEFT_MB * 1024 * 1024))

        t0 = time.monotonic()
        run = subprocess.Popen(
            [sys.executable, "-m", "jetl", "run", "fill", "--json"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        noticed = wait_for(lambda: "JetStream store disk full" in said(), 120, "jetl up to notice the full disk", said)

        def health_says() -> bool:
            h = jetl("health", "--json", cwd=tmp_path)
            rows = json.loads(h.stdout)["checks"] if h.stdout.startswith("{") else []
            return any(
                r["check"] == "jetstream" and r["status"] == "fail" and "JetStream store disk full" in r["detail"]
                for r in rows
            )

        reported = wait_for(health_says, 60, "jetl health to report the full disk", said)
        assert "nats-server will be restarted when room returns" in said()

        def services_say() -> bool:  # what `jetl health` says of a server jetl does not run, too
            h = jetl("health", "--json", cwd=tmp_path)
            rows = json.loads(h.stdout)["checks"] if h.stdout.startswith("{") else []
            return any(
                r["check"] == "service"
                and "has not answered publishes" in r["detail"]
                and "restart nats-server" in r["detail"]
                for r in rows
            )

        wait_for(services_say, 60, "the services to report the stream that does not answer", said)
        logs = tmp_path / ".jetl" / "logs"
        waiting = lambda: any("publishing paused" in f.read_text(errors="replace") for f in logs.glob("*.log"))  # noqa: E731
        # past the 15 s a publish used to fail after (which spent deliveries and failed the run): it waits instead
        wait_for(waiting, 90, "a publisher to wait for the stream instead of failing", said)
        filler.unlink()
        freed = time.monotonic()
        restarted = wait_for(lambda: "has room again" in said(), 60, "the restart", said)
        stdout, stderr = run.communicate(timeout=300)
        finished = time.monotonic()
        assert run.returncode == 0, stdout + stderr + said()
        result = json.loads(stdout)
        assert result["loaded"] == ROWS, result
        lines = [json.loads(line) for f in output.rglob("*") if f.is_file() for line in f.read_text().splitlines()]
        assert len(lines) == ROWS and len({r["id"] for r in lines}) == ROWS
        counts = jetl("counts", "fill", "--json", cwd=tmp_path)
        assert counts.returncode == 0, counts.stdout + counts.stderr
        assert up.poll() is None and "exited with code" not in said()  # no crash, no manual restart
        print(
            f"full disk noticed {noticed:.1f}s after the run was requested, in health {reported:.1f}s later; "
            f"restart {restarted:.1f}s after the filler was deleted; run done {finished - freed:.1f}s after that "
            f"({finished - t0:.1f}s in all)"
        )
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        up.send_signal(2)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
