"""`jetl init`: scaffold a pipeline module and a test that runs it in memory."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from jetl.cli._app import app, settings
from jetl.cli._output import EXIT_USAGE, console, die

PIPELINE_TEMPLATE = '''"""{name}: describe where the data comes from and where it goes.

Scaffolded by `jetl init {name}`. The schedule starts paused: `jetl resume {name}` turns it on.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from jetl import ColumnTransformer, Cron, FileExtractor, FileLoader, JetlSettings, Pipeline, TypeTransformer


class Raw{cls}(BaseModel):
    """A record as the source delivers it."""

    id: int
    name: str
    created_at: datetime


class {cls}(BaseModel):
    """A record as it lands in the destination."""

    id: int
    title: str
    created_at: datetime


def register_pipelines() -> list[Pipeline]:
    """The pipelines of this module."""
    data_dir = JetlSettings().data_dir
    return [
        Pipeline(
            name="{name}",
            description="TODO: what this pipeline is for",
            extractors=[FileExtractor(data_dir / "input" / "{name}" / "*.jsonl")],
            transformers=[TypeTransformer(Raw{cls}), ColumnTransformer(rename={{"name": "title"}})],
            loader=FileLoader(data_dir / "output"),
            schema={cls},
            schedule=Cron("{cron}", tz="{tz}", catch_up="latest", paused=True),
        )
    ]
'''

TEST_TEMPLATE = '''"""{name}: the pipeline in memory, extractor to loader, no server (scaffolded by `jetl init`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from jetl.protocols import ExtractContext, LoadContext
from jetl.registry import load_module

MODULE = (Path(__file__).resolve().parent / "{module_rel}").resolve()


def test_{name}_extracts_transforms_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETL_DATA_DIR", str(tmp_path))
    source = tmp_path / "input" / "{name}"
    source.mkdir(parents=True)
    rows = [
        {{"id": 1, "name": "first", "created_at": "2026-01-01T00:00:00Z"}},
        {{"id": 2, "name": "second", "created_at": "2026-01-02T00:00:00Z"}},
    ]
    (source / "sample.jsonl").write_text("\\n".join(json.dumps(r) for r in rows) + "\\n")

    (pipeline,) = load_module(MODULE)
    ctx = ExtractContext(pipeline=pipeline.name, run_id="test-run")

    async def extract() -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for extractor in pipeline.extractors:
            async for chunk in extractor.extract(ctx):
                assert not chunk.rejected, chunk.rejected
                out.extend(chunk.records)
        return out

    records = asyncio.run(extract())
    for step in pipeline.transformers:
        records = step.transform(records)
    models = pipeline.adapter.validate_python(records)
    assert [m.title for m in models] == ["first", "second"]  # type: ignore[attr-defined]

    batch = LoadContext(pipeline=pipeline.name, run_id="test-run", batch_id="test-run/000000", schema=pipeline.schema)
    assert pipeline.loader.load([m.model_dump() for m in models], batch) == 2
'''


@app.command()
def init(
    name: str = typer.Argument(..., help="Pipeline name: lower-case letters, digits and '_' (e.g. daily_sales)."),
    schedule: str = typer.Option("0 * * * *", "--schedule", help="Cron expression of the schedule."),
    tz: str = typer.Option("UTC", "--tz", help="Time zone of the schedule."),
    pipelines_dir: Path = typer.Option(None, "--dir", help="Where to write the module (default: JETL_PIPELINES_DIR)."),
    tests_dir: Path = typer.Option(
        None,
        "--tests-dir",
        help="Where to write its test (default: tests/pipelines/ of the project, the folder "
        "that holds the pipelines folder).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Scaffold a new pipeline module and a test for it.

    Writes <dir>/<name>_pipeline.py (a file extractor, two transformers, a file loader, a paused cron schedule)
    and <tests-dir>/test_<name>_pipeline.py, which runs it in memory. Running services pick the module up
    without a restart.

    Example: jetl init daily_sales --schedule "0 6 * * *" --tz Europe/Berlin
    """
    import re

    from jetl.errors import ConfigError
    from jetl.schedule import Cron

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        die(f"invalid pipeline name {name!r}", "use lower-case letters, digits and '_', starting with a letter", 2)
    try:
        Cron(schedule, tz=tz)
    except ConfigError as exc:
        die(str(exc), 'e.g. --schedule "0 * * * *" --tz UTC', EXIT_USAGE)
    folder = pipelines_dir or settings().pipelines_dir
    module = Path(folder) / f"{name}_pipeline.py"
    # the project is the folder that holds the pipelines folder, wherever the command runs (a subfolder, say)
    project = Path(folder).resolve().parent
    test = (Path(tests_dir) if tests_dir is not None else project / "tests" / "pipelines") / f"test_{name}_pipeline.py"
    existing = [str(p) for p in (module, test) if p.exists()]
    if existing and not force:
        die(f"{', '.join(existing)} already exist(s)", "pick another name, or --force to overwrite", EXIT_USAGE)
    cls = "".join(part.capitalize() for part in name.split("_")) or "Record"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text(PIPELINE_TEMPLATE.format(name=name, cls=cls, cron=schedule, tz=tz))
    test.parent.mkdir(parents=True, exist_ok=True)
    module_rel = Path(os.path.relpath(module.resolve(), test.parent.resolve())).as_posix()
    test.write_text(TEST_TEMPLATE.format(name=name, module_rel=module_rel))
    console.print(f"created {module}")
    console.print(f"created {test}")
    console.print(
        f"next: edit the module, then `jetl validate` and `uv run pytest {test}`; `jetl resume {name}` "
        "turns its schedule on",
        highlight=False,
    )
