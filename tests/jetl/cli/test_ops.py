"""`jetl init`, `jetl list` and `jetl validate`: no server needed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jetl.cli import app

GOOD = """
from pydantic import BaseModel
from jetl import ColumnTransformer, ConsoleLoader, Cron, FileExtractor, LambdaTransformer, Pipeline, TypeTransformer

class Raw(BaseModel):
    id: int
    name: str

class Row(BaseModel):
    id: int
    title: str

def register_pipelines():
    return [
        Pipeline(name="checked", extractors=[FileExtractor("INPUT/*.jsonl")], loader=ConsoleLoader(), schema=Row,
                 transformers=[TypeTransformer(Raw), ColumnTransformer(rename={"name": "title"})],
                 schedule=Cron("*/5 * * * *")),
        Pipeline(name="opaque", extractors=[FileExtractor("/nonexistent/*.jsonl")], loader=ConsoleLoader(),
                 schema=Row, transformers=[LambdaTransformer(lambda r: r)]),
    ]
"""


def cli(*args: str) -> tuple[int, Any, str]:
    result = CliRunner().invoke(app, list(args))
    try:
        return result.exit_code, json.loads(result.stdout), result.stderr
    except json.JSONDecodeError:
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "a.jsonl").write_text('{"id": 1, "name": "x"}\n')
    (tmp_path / "pipelines" / "good_pipeline.py").write_text(GOOD.replace("INPUT", str(tmp_path / "input")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JETL_PIPELINES_DIR", str(tmp_path / "pipelines"))
    monkeypatch.setenv("JETL_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_list_shows_each_pipeline_with_its_schedule_and_steps(project: Path) -> None:
    code, data, _ = cli("list", "--json")
    assert code == 0 and data["errors"] == {}
    by_name = {p["name"]: p for p in data["pipelines"]}
    assert by_name["checked"]["schedule"] == "*/5 * * * *" and by_name["checked"]["catch_up"] == "latest"
    assert by_name["checked"]["transformers"] == ["TypeTransformer", "ColumnTransformer"]
    assert by_name["opaque"]["schedule"] is None and by_name["opaque"]["loader"] == "console"


def test_validate_checks_schema_chain_schedule_and_connectors(project: Path) -> None:
    code, data, _ = cli("validate", "--json")
    assert code == 0 and data["errors"] == 0
    checks = {(c["pipeline"], c["check"]): c for c in data["checks"]}
    assert checks[("checked", "schema chain")]["result"] == "ok"
    assert checks[("opaque", "schema chain")]["result"] == "warn"  # a lambda: cannot be checked before a run
    assert (
        checks[("checked", "schedule")]["result"] == "ok" and "next slot" in checks[("checked", "schedule")]["detail"]
    )
    assert checks[("checked", "extractor 1: FileExtractor")]["detail"].startswith("1 file(s) match")
    assert checks[("opaque", "extractor 1: FileExtractor")]["result"] == "warn"
    assert cli("validate", "--strict")[0] == 1  # warnings fail under --strict


def test_a_broken_module_fails_validate_and_list_naming_file_and_line(project: Path) -> None:
    (project / "pipelines" / "bad_pipeline.py").write_text("def register_pipelines():\n    return [1 / 0]\n")
    code, data, _ = cli("validate", "--json")
    assert code == 2 and data["errors"] == 1
    (err,) = [c for c in data["checks"] if c["result"] == "error"]
    assert "bad_pipeline.py:2" in err["detail"] and "ZeroDivisionError" in err["detail"]
    code, data, _ = cli("list", "--json")
    assert code == 2 and {p["name"] for p in data["pipelines"]} == {"checked", "opaque"}  # the others still list


def test_init_scaffolds_a_pipeline_that_validates_and_whose_test_passes(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (project / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(project / "src" / "deep")  # from a subfolder: the test still goes beside the project's pipelines
    code, out, _ = cli("init", "daily_sales", "--schedule", "0 6 * * *", "--tz", "Europe/Berlin")
    assert code == 0, out
    module = project / "pipelines" / "daily_sales_pipeline.py"
    test = project / "tests" / "pipelines" / "test_daily_sales_pipeline.py"
    assert module.exists() and test.exists()
    assert not (project / "src" / "deep" / "tests").exists()
    code, data, _ = cli("validate", "--json")
    assert code == 0
    assert {
        c["result"]
        for c in data["checks"]
        if c["pipeline"] == "daily_sales" and c["check"] != "extractor 1: FileExtractor"
    } == {"ok"}
    code, data, _ = cli("list", "--json")
    (scaffolded,) = [p for p in data["pipelines"] if p["name"] == "daily_sales"]
    assert scaffolded["paused_in_code"] is True and scaffolded["tz"] == "Europe/Berlin"

    spec = importlib.util.spec_from_file_location("scaffolded_test", test)
    assert spec and spec.loader
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    generated.test_daily_sales_extracts_transforms_and_loads(tmp_path_factory.mktemp("scaffold"), monkeypatch)

    code, _, err = cli("init", "daily_sales")
    assert code == 2 and "already exist" in err
    code, _, err = cli("init", "Bad-Name")
    assert code == 2 and "invalid pipeline name" in err
    code, _, err = cli("init", "ok_name", "--schedule", "every hour")
    assert code == 2 and "invalid cron expression" in err


def test_a_server_that_answers_too_late_is_not_a_server_without_jetl(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster just after a node restart, under load, answers stream info late: `jetl status` says NATS did not
    answer (exit 3), never "this NATS has no jetl deployment", which sends people to `jetl deploy`."""
    import nats.errors

    import jetl.ops.run_list
    import jetl.topology

    class Late:
        async def stream_info(self, name: str) -> Any:
            raise nats.errors.TimeoutError

    class Connection:
        connected_url = None
        is_closed = False

        def jetstream(self, timeout: float = 5.0) -> Late:
            return Late()

        async def close(self) -> None:
            self.is_closed = True

    async def connect(settings: Any) -> Connection:
        return Connection()

    monkeypatch.setattr(jetl.ops.run_list, "fail_fast_connection", connect)
    monkeypatch.setattr(jetl.topology, "DEPLOYMENT_SLOW_S", 0.01)
    monkeypatch.setenv("JETL_NATS__URL", "nats://127.0.0.1:1")
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 3, result.output
    assert "did not say within" in result.output and "no jetl deployment" not in result.output


def test_a_hint_is_given_only_where_it_applies(project: Path) -> None:
    code, _, err = cli("replay", "checked")  # an argument missing: the message says it all
    assert code == 2 and "name a run (--run RUN)" in err and "hint:" not in err
    code, _, err = cli("backfill", "opaque", "--start", "2026-11-01", "--end", "2026-11-02")
    assert code == 2 and "has no schedule" in err  # about the pipeline module: the general hint applies
    assert "hint: check the pipeline module" in err


def test_jetl_help_imports_typer_and_the_command_modules_only() -> None:
    """What keeps `jetl --help` fast (bench/cli_latency.py measures it): a command module that imports pydantic,
    rich, nats or FastStream at its top makes every `jetl` invocation pay for it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.argv = ['jetl', '--help']\n"
        "from jetl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'pydantic', 'rich', 'nats', 'faststream', 'structlog', 'asyncio'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: jetl" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
