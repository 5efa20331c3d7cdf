"""Secret canaries: pipelines whose HTTP token, PostgreSQL password, ClickHouse password and alert webhook URL are
unique strings run on a real stack (one of them fails to connect, the webhook cannot be reached), and then every
place jetl writes to is searched for them: every stream but JETL_RAW (it holds the source data), the state bucket,
every log file in the data folder, and the output of every CLI command, `--json` or not. None may hold one.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest
import sqlalchemy as sa
from nats.js.errors import NotFoundError
from typer.testing import CliRunner

from jetl.cli import app
from jetl.ops.client import JetlClient
from jetl.settings import JetlSettings
from jetl.stack.embedded import Stack, free_port
from jetl.subjects import STREAMS, Kind
from jetl.testing.servers import NatsHandle
from jetl.topology import BUCKET

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINES = """
import os
from pydantic import BaseModel
from jetl import ClickHouseLoader, DatabaseExtractor, FileLoader, HttpExtractor, Pipeline
from jetl.extractors.http import BearerAuth

class Row(BaseModel):
    id: int
    name: str

def register_pipelines():
    api = HttpExtractor(os.environ["CANARY_API_URL"], auth=BearerAuth(os.environ["CANARY_HTTP_TOKEN"]))
    pg = os.environ["CANARY_PG_URL"]
    out = FileLoader(os.environ["CANARY_OUT"])
    return [
        Pipeline(name="api", extractors=[api], loader=out, schema=Row),
        Pipeline(name="db", extractors=[DatabaseExtractor(pg, table=os.environ["CANARY_TABLE"])], loader=out,
                 schema=Row),
        Pipeline(name="db_broken", extractors=[DatabaseExtractor(pg, table="no_such_table_here")], loader=out,
                 schema=Row),
        Pipeline(name="ch", extractors=[api], loader=ClickHouseLoader("canary_rows", dsn=os.environ["CANARY_CH_DSN"]),
                 schema=Row),
    ]
"""


class Api:
    """A JSON API that answers only the canary bearer token."""

    def __init__(self, token: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.headers.get("Authorization") == f"Bearer {token}"
                body = b'[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]' if ok else b'{"error": "who are you"}'
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rows"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def canaries() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {name: f"canary{name}{tag}" for name in ("Http", "Pg", "Ch", "Hook")}


@pytest.fixture
def pg_role(pg_url: str, canaries: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A PostgreSQL role whose password is the canary (trust auth lets it in whatever it says), and a table it
    reads; the URL and the table name."""
    role, table = f"canary_{uuid.uuid4().hex[:8]}", f"canary_rows_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(pg_url)
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{canaries['Pg']}'"))
        c.execute(sa.text(f"CREATE TABLE {table} (id int, name text)"))
        c.execute(sa.text(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')"))
        c.execute(sa.text(f"GRANT SELECT ON {table} TO {role}"))
    url = sa.make_url(pg_url).set(username=role, password=canaries["Pg"])
    try:
        yield url.render_as_string(hide_password=False), table
    finally:
        with engine.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            c.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        engine.dispose()


def test_no_secret_appears_in_streams_state_logs_or_cli_output(
    tmp_path: Path,
    nats: NatsHandle,
    canaries: dict[str, str],
    pg_role: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = Api(canaries["Http"])
    pipelines, data, out = tmp_path / "pipelines", tmp_path / "data", tmp_path / "out"
    pipelines.mkdir()
    (pipelines / "canary_pipeline.py").write_text(PIPELINES)
    nowhere = free_port()  # nothing listens here: ClickHouse and the webhook fail to connect
    env = {
        "CANARY_API_URL": api.url,
        "CANARY_HTTP_TOKEN": canaries["Http"],
        "CANARY_PG_URL": pg_role[0],
        "CANARY_TABLE": pg_role[1],
        "CANARY_OUT": str(out),
        "CANARY_CH_DSN": f"http://jetl:{canaries['Ch']}@127.0.0.1:{nowhere}/",  # in the pipeline's code
        "JETL_CLICKHOUSE__DSN": f"http://jetl:{canaries['Ch']}@127.0.0.1:{nowhere}/",  # and in the settings
        "JETL_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{nowhere}/hooks/{canaries['Hook']}",
        "JETL_ALERT_RETRIES": "2",
        "JETL_OUTAGE_BUDGET_S": "0",  # ClickHouse never answers: dead-letter at once, not after riding out 120 s
        "JETL_NATS__URL": nats.url,
        "JETL_PIPELINES_DIR": str(pipelines),
        "JETL_DATA_DIR": str(data),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    with Stack(data, pipelines, nats_url=nats.url, extra_env=env) as stack:
        states = asyncio.run(run_all())
        assert states["api"].status == "completed" and states["api"].loaded == 2  # the token worked
        assert states["db"].status == "completed" and states["db"].loaded == 2  # so did the password
        assert states["db_broken"].status == "failed"
        # ClickHouse never answered: the batch is dead-lettered after max_deliver and the run fails (nothing loaded)
        assert states["ch"].status == "failed" and states["ch"].rejected == 2
        scheduler_log = data / "logs" / "scheduler.log"
        wait_for_text(scheduler_log, "alert webhook failed; giving up")  # the failing webhook was tried

        outputs = cli_outputs({name: s.run_id for name, s in states.items()})
        stack.check()
    api.server.shutdown()

    assert "cannot open ClickHouse at http://jetl:***@127.0.0.1" in outputs["dlq list ch --json"]  # the reason shows
    places: dict[str, str] = {f"jetl {cmd}": text for cmd, text in outputs.items()}
    places.update(asyncio.run(stream_texts(nats.url)))
    places.update({str(p): p.read_text(errors="replace") for p in data.rglob("*.log")})
    assert len([p for p in places if p.endswith(".log")]) >= 4  # one per service at least
    leaks = [(where, name) for where, text in places.items() for name, c in canaries.items() if c in text]
    assert not leaks, leaks


async def run_all() -> dict[str, Any]:
    async with JetlClient(JetlSettings()) as jc:
        states = {}
        for name in ("api", "db", "db_broken", "ch"):
            req = await jc.request_run(name)
            states[name] = await jc.wait(name, req.run_id, timeout=180)
        return states


def wait_for_text(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared in {path}")


def cli_outputs(runs: dict[str, str]) -> dict[str, str]:
    """Every read-only command's output (stdout and stderr), plain and `--json`."""
    commands = [["list"], ["validate"], ["status"], ["health", "--timeout", "2"], ["schedule"]]
    for pipeline, run_id in runs.items():
        commands += [["audit", run_id], ["counts", pipeline], ["logs", run_id], ["dlq", "list", pipeline]]
    outputs: dict[str, str] = {}
    for args in commands:
        for extra in ([], ["--json"]):
            result = CliRunner().invoke(app, [*args, *extra])
            outputs[" ".join([*args, *extra])] = result.stdout + result.stderr + repr(result.exception or "")
    return outputs


async def stream_texts(url: str) -> dict[str, str]:
    """Every message (headers and data) of every stream but JETL_RAW, and of the state bucket's stream."""
    nc = await nats_py.connect(url)
    js = nc.jetstream()
    texts: dict[str, str] = {}
    try:
        names = [spec.name for kind, spec in STREAMS.items() if kind is not Kind.RAW] + [f"KV_{BUCKET}"]
        for name in names:
            info = await js.stream_info(name)
            parts: list[str] = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
                try:
                    msg = await js.get_msg(name, seq)
                except NotFoundError:
                    continue
                parts.append(f"{msg.subject} {msg.headers} {(msg.data or b'').decode(errors='replace')}")
            texts[f"stream {name}"] = "\n".join(parts)
    finally:
        await nc.close()
    return texts
