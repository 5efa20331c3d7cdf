"""What an operator sees without a wide terminal, and what the CLI reads its settings from.

Tables in a pipe are TSV and on a narrow terminal one field a line, never cut; dates carry the year when it is not
this one; a stack context sits under the environment (JETL_NATS__URL drops its NATS part whole); log files have
no ANSI codes; the supervisor restarts with backoff, shows only this start's log lines, and gives up on a loop.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from rich.table import Table
from typer.testing import CliRunner

from jetl.cli import app
from jetl.cli._output import JetlConsole, short_stamp
from jetl.context import StackContext
from jetl.errors import JetlError
from jetl.settings import settings_with_context
from jetl.stack.embedded import NatsServer, ServiceProcess, Stack, Supervisor, died_message, stable_port


def table() -> Table:
    t = Table(title="runs of customers")
    for col in ("run", "status", "notes"):
        t.add_column(col)
    t.add_row("customers-m20261128T000000abcd", "[green]completed[/]", "a note\twith a tab " + "x" * 120)
    t.add_row("customers-m20261128T000001abcd", "[red]failed[/]", "")
    return t


def render(console: JetlConsole) -> str:
    console.print(table())
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_a_piped_table_is_tsv_with_every_value_whole() -> None:
    out = render(JetlConsole(file=io.StringIO(), width=80))
    lines = out.splitlines()
    assert lines[0] == "# runs of customers"
    assert lines[1] == "run\tstatus\tnotes"
    assert lines[2].split("\t") == ["customers-m20261128T000000abcd", "completed", "a note with a tab " + "x" * 120]
    assert lines[3].split("\t") == ["customers-m20261128T000001abcd", "failed", ""]
    assert "\x1b" not in out and "…" not in out


def test_a_narrow_terminal_gets_one_field_a_line() -> None:
    out = render(JetlConsole(file=io.StringIO(), width=80, force_terminal=True))
    assert "customers-m20261128T000000abcd" in out and "…" not in out
    assert "status  completed" in out and "status  failed" in out


def test_a_wide_terminal_keeps_the_table() -> None:
    out = render(JetlConsole(file=io.StringIO(), width=200, force_terminal=True, color_system=None))
    assert "│" in out and "\t" not in out


def test_dates_carry_the_year_when_it_is_not_this_one() -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    assert short_stamp(datetime(2026, 12, 1, 6, 0, tzinfo=UTC), now) == "12-01 06:00"
    assert short_stamp(datetime(2027, 1, 1, 0, 0, tzinfo=UTC), now) == "2027-01-01 00:00"


def test_the_context_sits_under_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ctx = StackContext(nats_url="nats://127.0.0.1:4999", password=SecretStr("pw"), data_dir=tmp_path)
    s = settings_with_context(ctx.settings_values())
    assert s.nats.url == "nats://127.0.0.1:4999" and s.nats.user == "operator"
    assert s.nats.password is not None and s.nats.password.get_secret_value() == "pw"
    monkeypatch.setenv("JETL_NATS__USER", "alice")
    assert settings_with_context(ctx.settings_values()).nats.user == "alice"  # env over context
    monkeypatch.setenv("JETL_NATS__URL", "nats://elsewhere:4222")
    s = settings_with_context(ctx.settings_values())
    # another server: the context's credentials are not sent there
    assert s.nats.url == "nats://elsewhere:4222" and s.nats.password is None
    assert s.data_dir == tmp_path


def test_commands_find_the_context_from_a_subfolder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    StackContext(nats_url="nats://127.0.0.1:9", data_dir=tmp_path / ".jetl").save()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    for key in [k for k in os.environ if k.startswith("JETL_")]:
        monkeypatch.delenv(key)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 3 and "nats://127.0.0.1:9" in result.output  # the context's URL, found by itself
    other = StackContext(nats_url="nats://127.0.0.1:8", data_dir=tmp_path / "other").save()
    result = CliRunner().invoke(app, ["--context", str(other.parent), "status"])
    assert result.exit_code == 3 and "nats://127.0.0.1:8" in result.output
    result = CliRunner().invoke(app, ["--context", str(tmp_path / "nowhere"), "status"])
    assert result.exit_code == 2 and "no stack context" in result.output


def test_a_stable_port_is_kept_while_free() -> None:
    import socket

    port = stable_port(None)
    assert stable_port(port) == port
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert stable_port(port) != port


def test_log_files_hold_no_ansi_codes(tmp_path: Path) -> None:
    code = (
        "from jetl.logging import configure_logging, get_logger\n"
        "configure_logging('loader')\n"
        "get_logger('x').warning('batch loaded', run_id='r1')\n"
        "try:\n    1/0\nexcept ZeroDivisionError:\n    get_logger('x').exception('failed')\n"
    )
    log = tmp_path / "loader.log"
    with log.open("w") as f:
        subprocess.run([sys.executable, "-c", code], stderr=f, check=True)
    text = log.read_text()
    assert "batch loaded" in text and "ZeroDivisionError" in text and "\x1b[" not in text


def test_a_json_log_file_holds_json_lines_only_whoever_logged_them(tmp_path: Path) -> None:
    # FastStream's broker logger and nats-py log through the standard library with handlers of their own (colour, to
    # stdout): in a service they go through jetl's renderer, with the host that wrote them
    code = (
        "import logging\n"
        "from jetl.bus import make_broker\n"
        "from jetl.logging import configure_logging, get_logger\n"
        "from jetl.settings import NatsSettings\n"
        "configure_logging('loader', 'INFO', 'json')\n"
        "broker = make_broker(NatsSettings(url='nats://127.0.0.1:9'))\n"
        "get_logger('x').warning('batch loaded', run_id='r1')\n"
        "logging.getLogger('faststream').warning('Connection broken with UnexpectedEOF()')\n"
        "logging.getLogger('faststream.jetl').warning('from the broker')\n"
        "try:\n    1/0\nexcept ZeroDivisionError:\n    logging.getLogger('nats').exception('nats: unexpected EOF')\n"
    )
    log = tmp_path / "loader.log"
    with log.open("w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, stderr=f, check=True)
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line is JSON
    events = [line["event"] for line in lines]
    assert events == [
        "batch loaded",
        "Connection broken with UnexpectedEOF()",
        "from the broker",
        "nats: unexpected EOF",
    ]
    assert all(line["host"] == socket.gethostname() and line["service"] == "loader" for line in lines)
    assert "ZeroDivisionError" in lines[-1]["exception"] and "\x1b[" not in log.read_text()


def test_jetl_logs_shows_the_host_of_each_line() -> None:
    from jetl.cli.logs import format_log_line

    line = {"timestamp": "2026-12-07T10:00:01Z", "host": "host-b", "service": "loader", "level": "info"}
    assert format_log_line(line | {"event": "batch loaded", "rows": 5}).split()[1:5] == [
        "host-b",
        "loader",
        "info",
        "batch",
    ]


def sleeper(tmp_path: Path, name: str, code: str) -> ServiceProcess:
    """A ServiceProcess whose process runs `code` instead of a service (the supervisor only sees processes)."""
    p = ServiceProcess(name, dict(os.environ), tmp_path / f"{name}.log")
    p.log_path.write_text("a stale line from an earlier start\n")

    def start() -> ServiceProcess:
        p.log_offset = p.log_path.stat().st_size
        with p.log_path.open("ab") as log:
            p.proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log, env=p.env)
        return p

    p.start = start  # type: ignore[method-assign]
    return p.start()


def test_the_supervisor_restarts_with_backoff_and_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    crash = "import os, sys; print('boom from this start', os.environ.get('JETL_RESTARTS', '0')); sys.exit(7)"
    stack = Stack(data_dir=tmp_path, pipelines_dir=tmp_path)
    stack.procs["transformer"] = sleeper(tmp_path, "transformer", crash)
    stack.procs["loader"] = sleeper(tmp_path, "loader", "import time; time.sleep(60)")
    sup = Supervisor(stack, max_crashes=3, window=60)
    try:
        stack.procs["transformer"].proc.wait()  # type: ignore[union-attr]
        seen = sup.poll(now=100.0)
        assert [(r.name, r.exit_code, r.restarts, r.delay) for r in seen] == [("transformer", 7, 1, 0.5)]
        assert "boom from this start 0" in seen[0].log_tail and "stale" not in seen[0].log_tail
        assert sup.poll(now=100.6) == []  # the restart is due: it is started again, with its count
        stack.procs["transformer"].proc.wait()  # type: ignore[union-attr]
        seen = sup.poll(now=101.0)
        assert seen[0].delay == 1.0 and "boom from this start 1" in seen[0].log_tail
        assert "boom from this start 0" not in seen[0].log_tail  # only this start's lines
        sup.poll(now=102.1)
        stack.procs["transformer"].proc.wait()  # type: ignore[union-attr]
        with pytest.raises(JetlError, match="transformer crashed 3 times within 60s"):
            sup.poll(now=103.0)
        assert stack.procs["loader"].alive() and sup.restarts == {"transformer": 2}
    finally:
        stack.stop()


def test_the_supervisor_restarts_a_killed_nats_server_on_its_port_and_store(tmp_path: Path) -> None:
    stack = Stack(data_dir=tmp_path, pipelines_dir=tmp_path)
    stack.server = NatsServer(tmp_path / "nats").start()
    port = stack.server.port
    sup = Supervisor(stack)
    try:
        assert sup.poll(now=10.0) == []
        os.kill(stack.server.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        stack.server.proc.wait()  # type: ignore[union-attr]
        seen = sup.poll(now=20.0)
        assert [(r.what, r.exit_code, r.restarts) for r in seen] == [("nats-server", -9, 1)]
        assert "nats-server exited with code -9" in died_message("nats-server", stack.server)
        sup.poll(now=21.0)  # its backoff is over: started again, on the same port
        assert stack.server.alive() and stack.server.port == port and sup.restarts == {"nats-server": 1}
    finally:
        stack.stop()


def test_the_supervisor_restarts_a_server_whose_store_filled_its_disk_once_there_is_room(tmp_path: Path) -> None:
    from jetl.ops.health import disk_full_status

    stack = Stack(data_dir=tmp_path, pipelines_dir=tmp_path)
    stack.server = NatsServer(tmp_path / "nats", restart_free_mb=10**9).start()  # more room than any disk has
    port, pid = stack.server.port, stack.server.proc.pid  # type: ignore[union-attr]
    sup = Supervisor(stack)
    try:
        assert sup.poll(now=10.0) == [] and sup.notes == []
        with stack.server.log_path.open("a") as log:  # what nats-server 2.15 logs when its store's disk is full
            log.write(
                "[ERR] JetStream failed to store a msg on stream 'JETL_RAW': write x.blk: no space left on device\n"
            )
        sup.poll(now=11.0)
        assert len(sup.notes) == 1 and sup.notes[0].startswith("JetStream store disk full: ")
        assert "nats-server will be restarted when room returns" in sup.notes[0]
        assert disk_full_status(tmp_path / "nats") == sup.notes[0]  # what `jetl health` shows
        sup.poll(now=12.0)
        assert len(sup.notes) == 1 and stack.server.proc.pid == pid  # still no room: it waits  # type: ignore[union-attr]
        stack.server.restart_free_mb = 0
        sup._disk.restart_free = 0  # type: ignore[union-attr]
        sup.poll(now=13.0)
        assert "has room again" in sup.notes[-1] and "restarting nats-server" in sup.notes[-1]
        assert stack.server.alive() and stack.server.port == port and stack.server.proc.pid != pid  # type: ignore[union-attr]
        assert disk_full_status(tmp_path / "nats") is None and sup.restarts == {"nats-server": 1}
        sup.poll(now=14.0)
        assert len(sup.notes) == 2  # the old line is not read again
    finally:
        stack.stop()


@settings(max_examples=300, deadline=None)
@given(
    cells=st.lists(
        st.one_of(
            st.text(alphabet="ab [/]\\\t\n-", max_size=12),
            st.builds(
                lambda s, v, c: f"[{s}]{v}[/{c}]",
                st.sampled_from(["red", "green", "dim"]),
                st.text(max_size=6),
                st.sampled_from(["", "red", "green"]),
            ),
        ),
        min_size=2,
        max_size=6,
    ),
    title=st.sampled_from([None, "", "runs", "runs of [b]x[/b]"]),
)
def test_rows_print_as_tsv_without_rich_as_rich_prints_them_or_leave_it_to_rich(
    cells: list[str], title: str | None
) -> None:
    """`Rows.tsv` (`jetl status` in a pipe, without importing rich) is the TSV `JetlConsole` prints for the same rich
    Table, or None (then rich prints it)."""
    from jetl.cli._console import _cell, table_lines
    from jetl.cli._output import Rows, plain_cell

    for c in cells:
        plain = plain_cell(c)
        assert plain is None or plain == _cell(c)  # rich may refuse what it declines ('[red]x[/green]')
    rows = Rows(title)
    rows.add_column("a")
    rows.add_column("b", justify="right")
    for i in range(0, len(cells) - 1, 2):
        rows.add_row(cells[i], cells[i + 1])
    tsv = rows.tsv()
    if tsv is not None:
        assert tsv == table_lines(rows.table(), vertical=False)
