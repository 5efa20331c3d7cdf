"""Sampling profiles of the running services (py-spy, from PyPI), and what they say.

`bench/run.py --profile DIR` starts `py-spy record` on every service for the throughput run and writes, per
service, the collapsed stacks (`DIR/<service>.txt`, loadable in speedscope.app or flamegraph.pl) and a summary
(`DIR/summary.txt`, also printed): per service, where its threads were when they held the GIL (its Python work;
native code that releases the GIL, such as chdb's insert threads, is not in it), sampled without pausing it.

py-spy is used from PATH, else through `uvx py-spy` (uv downloads it from PyPI once). It needs ptrace rights on
the service processes (root, or kernel.yama.ptrace_scope=0).

    uv run python bench/spy.py DIR   # summarise a folder of collapsed stacks again
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 100
"""Samples per second."""

# Leaf frames of a thread that is waiting, not working: idle samples are left out of the summary.
IDLE = (
    "select (selectors.py",
    "Condition.wait (threading.py",
    "_worker (concurrent/futures/thread.py:81)",
    "Queue.get (queue.py",
    "sleep",
    "Event.wait",
    "_wait_for_tstate_lock",
    "EpollSelector.select",
)


def py_spy() -> list[str]:
    """The py-spy command."""
    found = shutil.which("py-spy")
    if found:
        return [found]
    if shutil.which("uvx"):
        return ["uvx", "py-spy"]
    raise RuntimeError("py-spy not found: install it (pip install py-spy) or install uv for `uvx py-spy`")


def start(pids: dict[str, int], out: Path) -> list[subprocess.Popen[bytes]]:
    """One `py-spy record` per process (stopped with `stop`)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = py_spy()
    return [
        subprocess.Popen(
            [
                *cmd,
                "record",
                "-p",
                str(pid),
                "-r",
                str(RATE),
                "-f",
                "raw",
                "--threads",
                "--gil",
                "--nonblocking",
                "-o",
                str(out / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def stop(spies: list[subprocess.Popen[bytes]]) -> None:
    """Stop recording (py-spy writes its file on SIGINT)."""
    for s in spies:
        s.send_signal(signal.SIGINT)
    for s in spies:
        try:
            s.wait(timeout=60)
        except subprocess.TimeoutExpired:
            s.kill()


def _frame(frame: str) -> str:
    """`function (path/to/module.py:line)` without the line, and the path cut to the package."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/shared/", "/services/", "/bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def summarise(folder: Path, top: int = 8) -> str:
    """Per service: seconds of samples holding the GIL, and the functions (with what they call) that took most."""
    lines = []
    for path in sorted(folder.glob("*.txt")):
        if path.name == "summary.txt":
            continue
        busy = Counter[str]()
        inclusive = Counter[str]()
        total = 0
        for row in path.read_text().splitlines():
            stack, _, n = row.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            frames = stack.split(";")[1:]  # the first is the thread
            if not frames or any(frames[-1].startswith(i) or i in frames[-1] for i in IDLE):
                continue
            count = int(n)
            total += count
            busy[_frame(frames[-1])] += count
            for f in {_frame(f) for f in frames if "jetl" in f or "bench" in f}:
                inclusive[f] += count
        if not total:
            continue
        lines.append(f"{path.stem}: {total / RATE:.1f} s holding the GIL")
        lines.append("  in (with what it calls):")
        lines += [f"    {n / total:5.1%}  {f}" for f, n in inclusive.most_common(top)]
        lines.append("  itself:")
        lines += [f"    {n / total:5.1%}  {f}" for f, n in busy.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))
