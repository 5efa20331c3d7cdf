"""Operational commands: init, list, validate, deploy, migrate, health, logs, schedule, pause, resume.

Exit codes (jetl.cli._app): 0 ok; 1 the thing ran and found a problem (unhealthy, a stream that differs, a failed
migration); 2 bad arguments, pipelines or migration files; 3 NATS or ClickHouse could not be reached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson
import typer
from rich.table import Table

from jetl import subjects
from jetl.cli._app import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    app,
    console,
    err_console,
    progress,
    run_async,
    settings,
)
from jetl.errors import ConfigError, DestinationUnavailable, JetlError, TransientError
from jetl.pipeline import Pipeline
from jetl.settings import JetlSettings
from jetl.subjects import Kind

SERVICE_NAMES = ("extractor", "transformer", "loader", "scheduler")


# --- helpers ---------------------------------------------------------------------------------------------------


def die(message: str, hint: str = "", code: int = EXIT_FAILED) -> NoReturn:
    """One clear error line, a hint, and an exit code."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    if hint:
        err_console.print(f"[dim]hint: {hint}[/dim]", highlight=False)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    """Print data as one JSON document (no wrapping, no colour: for scripts)."""
    print(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode())


def load_pipelines(s: JetlSettings) -> tuple[dict[str, Pipeline], dict[str, str]]:
    """Every pipeline in the configured folder, and {file: error} for the modules that are broken."""
    from jetl.registry import discover_report

    folder = Path(s.pipelines_dir)
    if not folder.is_dir():
        die(
            f"pipelines folder {folder} does not exist",
            "run from the project root or set JETL_PIPELINES_DIR",
            EXIT_USAGE,
        )
    return discover_report(folder)


def one_pipeline(s: JetlSettings, name: str) -> Pipeline:
    """A pipeline by name, or exit 2 naming the known ones."""
    found, errors = load_pipelines(s)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        broken = f"; {len(errors)} module(s) failed to load (jetl validate)" if errors else ""
        die(f"no pipeline named {name!r} (known: {known}){broken}", "see `jetl list`", EXIT_USAGE)
    return found[name]


async def nats_connection(s: JetlSettings) -> Any:
    """A nats-py connection that fails fast (no reconnect loop) with one clear error."""
    from jetl.bus import connect

    async def quiet(exc: Exception) -> None:  # nats-py prints a traceback per failed attempt otherwise
        return None

    try:
        # max_reconnect_attempts=0 would make nats-py retry forever; 1 fails fast
        return await connect(
            s.nats, allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=quiet
        )
    except Exception as exc:
        raise TransientError(f"cannot reach NATS at {s.nats.url}: {type(exc).__name__} {exc}") from exc


def schedule_text(p: Pipeline) -> str:
    """`0 * * * * UTC, catch-up latest, 1 at a time` or `-`."""
    c = p.schedule
    if c is None:
        return "-"
    paused = ", paused in code" if c.paused else ""
    return f"{c.expression} {c.tz}, catch-up {c.catch_up}, max {c.max_active_runs} active{paused}"


def _names(items: Any) -> list[str]:
    return [type(x).__name__ for x in items]


# --- init ------------------------------------------------------------------------------------------------------

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


_COLOUR = {"ok": "green", "warn": "yellow", "error": "red", "fail": "red"}


def _print_checks(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...], status: str) -> None:
    """A table of check rows (validate, health), the `status` column coloured by its value."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*(f"[{_COLOUR[r[c]]}]{r[c]}[/]" if c == status else str(r[c]) for c in columns))
    console.print(t)


@app.command()
def init(
    name: str = typer.Argument(..., help="Pipeline name: lower-case letters, digits and '_' (e.g. daily_sales)."),
    schedule: str = typer.Option("0 * * * *", "--schedule", help="Cron expression of the schedule."),
    tz: str = typer.Option("UTC", "--tz", help="Time zone of the schedule."),
    pipelines_dir: Path = typer.Option(None, "--dir", help="Where to write the module (default: JETL_PIPELINES_DIR)."),
    tests_dir: Path = typer.Option(Path("tests/pipelines"), "--tests-dir", help="Where to write its test."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Scaffold a new pipeline module and a test for it.

    Writes <dir>/<name>_pipeline.py (a file extractor, two transformers, a file loader, a paused cron schedule)
    and <tests-dir>/test_<name>_pipeline.py, which runs it in memory. Running services pick the module up
    without a restart.

    Example: jetl init daily_sales --schedule "0 6 * * *" --tz Europe/Berlin
    """
    import re

    from jetl.schedule import Cron

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        die(f"invalid pipeline name {name!r}", "use lower-case letters, digits and '_', starting with a letter", 2)
    try:
        Cron(schedule, tz=tz)
    except ConfigError as exc:
        die(str(exc), 'e.g. --schedule "0 * * * *" --tz UTC', EXIT_USAGE)
    folder = pipelines_dir or settings().pipelines_dir
    module = Path(folder) / f"{name}_pipeline.py"
    test = Path(tests_dir) / f"test_{name}_pipeline.py"
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


# --- list, validate ----------------------------------------------------------------------------------------------


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print the pipelines as JSON.")) -> None:
    """List the pipelines in the pipelines folder: schedule, extractors, transformers, loader, schema, file.

    Exit code 2 when a module fails to load (it is listed under errors; `jetl validate` says more).

    Example: jetl list --json
    """
    found, errors = load_pipelines(settings())
    rows = [
        {
            "name": p.name,
            "description": p.description,
            "schedule": p.schedule.expression if p.schedule else None,
            "tz": p.schedule.tz if p.schedule else None,
            "catch_up": p.schedule.catch_up if p.schedule else None,
            "max_active_runs": p.schedule.max_active_runs if p.schedule else None,
            "paused_in_code": p.schedule.paused if p.schedule else None,
            "extractors": _names(p.extractors),
            "transformers": _names(p.transformers),
            "loader": p.loader.describe(),
            "schema": p.schema.__name__,
            "batch_size": p.batch_size,
            "file": p.source_file,
        }
        for p in sorted(found.values(), key=lambda p: p.name)
    ]
    if json_out:
        emit_json({"pipelines": rows, "errors": errors})
    else:
        t = Table(title=f"{len(rows)} pipeline(s) in {settings().pipelines_dir}")
        for col in ("name", "schedule", "extractors", "transformers", "loader", "schema"):
            t.add_column(col, overflow="fold")
        for p in sorted(found.values(), key=lambda p: p.name):
            t.add_row(
                p.name,
                schedule_text(p),
                ", ".join(_names(p.extractors)),
                " -> ".join(_names(p.transformers)) or "-",
                p.loader.describe(),
                p.schema.__name__,
            )
        console.print(t)
        for file, error in errors.items():
            err_console.print(f"[red]broken:[/red] {file}: {error}", highlight=False)
    if errors:
        raise typer.Exit(EXIT_USAGE)


def check_pipeline(p: Pipeline, s: JetlSettings) -> list[tuple[str, str, str]]:
    """(check, ok|warn|error, detail) for one imported pipeline: schema chain, schedule, connectors."""
    from jetl.pipeline import output_fields, required_inputs
    from jetl.schedule import run_id_for

    out: list[tuple[str, str, str]] = []
    fields = output_fields(p.transformers)
    if fields is None:
        opaque = [
            type(t).__name__
            for t in p.transformers
            if not callable(getattr(t, "output_fields", None)) and not callable(getattr(t, "output_schema", None))
        ]
        if opaque:
            out.append(("schema chain", "warn", f"not checkable before a run: opaque step(s) {', '.join(opaque)}"))
        elif p.transformers:
            out.append(
                (
                    "schema chain",
                    "warn",
                    "not checkable before a run: the source's fields are unknown "
                    "(start the chain with a TypeTransformer to check it)",
                )
            )
        else:
            out.append(("schema chain", "ok", f"records validate straight into {p.schema.__name__}"))
    else:
        needed = sorted(required_inputs(p.schema))
        out.append(
            ("schema chain", "ok", f"transformers produce every required field of {p.schema.__name__} ({len(needed)})")
        )
    if p.schedule is None:
        out.append(("schedule", "ok", "none (runs on request, backfill or replay only)"))
    else:
        try:
            nxt = p.schedule.next_after(datetime.now(UTC))
            run_id_for(p.name, nxt)
            out.append(
                ("schedule", "ok", f"{p.schedule.expression} ({p.schedule.tz}); next slot {nxt:%Y-%m-%d %H:%M}Z")
            )
        except Exception as exc:
            out.append(("schedule", "error", f"{type(exc).__name__}: {exc}"))
    for i, connector in enumerate([*p.extractors, p.loader]):
        kind = "loader" if i == len(p.extractors) else f"extractor {i + 1}"
        out.append(check_connector(kind, connector, s))
    return out


def check_connector(kind: str, connector: Any, s: JetlSettings) -> tuple[str, str, str]:
    """The connector's own `check()` (`jetl.protocols.Check`), as a (name, status, detail) row."""
    name = f"{kind}: {type(connector).__name__}"
    try:
        status, detail = connector.check(s)
    except Exception as exc:
        return name, "error", f"{type(exc).__name__}: {exc}"
    return name, status, detail


@app.command()
def validate(
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
) -> None:
    """Import and check every pipeline: modules load, schemas chain, connectors configured, cron valid.

    Exit code 0 when every pipeline passes, 2 when a module or a check fails (1 with --strict and only warnings).

    Example: jetl validate --strict
    """
    s = settings()
    found, errors = load_pipelines(s)
    rows: list[dict[str, str]] = [
        {"pipeline": "-", "check": "import", "result": "error", "detail": e, "file": f} for f, e in errors.items()
    ]
    for p in sorted(found.values(), key=lambda p: p.name):
        rows.append(
            {"pipeline": p.name, "check": "import", "result": "ok", "detail": "registered", "file": p.source_file}
        )
        for check, result, detail in check_pipeline(p, s):
            rows.append({"pipeline": p.name, "check": check, "result": result, "detail": detail, "file": p.source_file})
    n_err = sum(r["result"] == "error" for r in rows)
    n_warn = sum(r["result"] == "warn" for r in rows)
    if json_out:
        emit_json(
            {"ok": n_err == 0 and (n_warn == 0 or not strict), "errors": n_err, "warnings": n_warn, "checks": rows}
        )
    else:
        title = f"jetl validate: {len(found)} pipeline(s), {n_err} error(s), {n_warn} warning(s)"
        _print_checks(title, rows, ("pipeline", "check", "result", "detail"), "result")
    if n_err:
        raise typer.Exit(EXIT_USAGE)
    if n_warn and strict:
        raise typer.Exit(EXIT_FAILED)


# --- deploy, migrate ------------------------------------------------------------------------------------------


@contextmanager
def clickhouse_client(s: JetlSettings, dsn: str | None) -> Iterator[Any]:
    """A clickhouse-connect client on the configured DSN, closed afterwards (a chdb folder is freed for others)."""
    from jetl.loaders.clickhouse import close_clients, get_client

    target = dsn or s.clickhouse_dsn
    try:
        client = get_client(target, s.clickhouse)
    except DestinationUnavailable as exc:
        hint = (
            "a chdb folder opens in one process at a time: stop the loader (or `jetl up`) first"
            if target.startswith("chdb:")
            else "is ClickHouse up? JETL_CLICKHOUSE__DSN points at it"
        )
        die(str(exc).splitlines()[0][:300], hint, EXIT_UNAVAILABLE)
    try:
        yield client
    finally:
        close_clients()


def _migrations(folder: Path) -> list[Any]:
    from jetl.migrations import discover_migrations

    try:
        return discover_migrations(folder)
    except ConfigError as exc:
        die(str(exc), "migration files are named NNNN_name.sql, one version each", EXIT_USAGE)


def run_migrations(s: JetlSettings, folder: Path, dsn: str | None, dry_run: bool, quiet: bool) -> list[dict[str, Any]]:
    """Apply (or list, with dry_run) the pending migrations; returns what was applied as rows."""
    from jetl.migrations import Migrator

    migrations = _migrations(folder)
    with clickhouse_client(s, dsn) as client:
        migrator = Migrator(client, s.clickhouse.database)
        total = sum(len(m.statements()) for m in migrations)
        with progress(not (dry_run or quiet), "migrating", total) as update:
            done = migrator.apply(
                migrations,
                dry_run=dry_run,
                on_step=lambda m, i, n: update(advance=1, description=f"{m.label} ({i}/{n})"),
            )
    return [
        {
            "version": m.version,
            "name": m.name,
            "file": str(m.path),
            "statements": len(m.statements()),
            "action": "would apply" if dry_run else "applied",
        }
        for m in done
    ]


@app.command()
def migrate(
    folder: Path = typer.Option(Path("migrations/clickhouse"), "--dir", help="Folder of NNNN_name.sql files."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be applied; change nothing."),
    status: bool = typer.Option(False, "--status", help="Show each migration's state instead of applying."),
    dsn: str = typer.Option(
        None, "--dsn", help="ClickHouse DSN (default: JETL_CLICKHOUSE__DSN, else chdb in the data folder)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Apply versioned SQL migrations to ClickHouse, in order, each once (recorded in jetl_migrations).

    With chdb (the default) the folder opens in one process at a time: run this while the loader is stopped.
    Exit codes: 0 applied or nothing to do; 1 a statement failed or an applied file was edited (--status: a
    migration changed or is missing); 2 misnamed files; 3 ClickHouse unreachable.

    Example: jetl migrate --dry-run; jetl migrate; jetl migrate --status --json
    """
    from jetl.migrations import Migrator

    s = settings()
    try:
        if status:
            migrations = _migrations(folder)
            with clickhouse_client(s, dsn) as client:
                states = Migrator(client, s.clickhouse.database).status(migrations)
            rows = [
                {
                    "version": x.version,
                    "name": x.name,
                    "state": x.state,
                    "applied_at": x.applied_at,
                    "checksum": x.checksum,
                    "detail": x.detail,
                }
                for x in states
            ]
            bad = [r for r in rows if r["state"] in ("changed", "missing")]
            if json_out:
                emit_json({"migrations": rows, "pending": sum(r["state"] == "pending" for r in rows)})
            else:
                t = Table(title=f"migrations in {folder}")
                for col in ("version", "name", "state", "applied at", "detail"):
                    t.add_column(col)
                for x in states:
                    t.add_row(
                        f"{x.version:04d}",
                        x.name,
                        x.state,
                        f"{x.applied_at:%Y-%m-%d %H:%M:%S}" if x.applied_at else "-",
                        x.detail,
                    )
                console.print(t)
            if bad:
                raise typer.Exit(EXIT_FAILED)
            return
        applied = run_migrations(s, folder, dsn, dry_run, json_out)
    except JetlError as exc:
        die(str(exc), "fix the migration (ClickHouse DDL is not transactional: make statements re-runnable)")
    if json_out:
        emit_json({"dry_run": dry_run, "migrations": applied})
    elif not applied:
        console.print("nothing to apply: every migration is applied")
    else:
        for r in applied:
            console.print(f"{r['action']}: {r['version']:04d}_{r['name']} ({r['statements']} statement(s))")


@app.command()
def deploy(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; change nothing."),
    migrations: Path = typer.Option(Path("migrations/clickhouse"), "--migrations", help="Migrations folder."),
    no_migrate: bool = typer.Option(False, "--no-migrate", help="Only declare NATS streams, consumers and KV."),
    json_out: bool = typer.Option(False, "--json", help="Print the changes as JSON."),
) -> None:
    """Declare the NATS streams, consumers and KV bucket, then apply pending ClickHouse migrations. Idempotent.

    A stream whose live config differs from the declared one is updated, or reported as `differs` when JetStream
    cannot change it in place (retention, storage); a second deploy changes nothing and says so.
    Exit codes: 0 done (or nothing to do); 1 something differs and could not be updated; 3 unreachable.

    Example: jetl deploy --dry-run && jetl deploy
    """
    from jetl.bus import declare

    s = settings()

    async def _declare() -> list[Any]:
        nc = await nats_connection(s)
        try:
            return await declare(nc, s.nats, dry_run=dry_run)
        finally:
            await nc.close()

    spinning = console.is_terminal and not json_out
    with console.status("declaring streams, consumers and KV bucket") if spinning else nullcontext():
        changes = run_async(_declare())
    rows = [{"what": c.what, "name": c.name, "action": c.action, "detail": c.detail} for c in changes]
    if dry_run:
        for r in rows:
            r["action"] = {"created": "would create", "updated": "would update"}.get(r["action"], r["action"])
    if not no_migrate:
        if migrations.is_dir():
            try:
                for m in run_migrations(s, migrations, None, dry_run, quiet=json_out):
                    rows.append(
                        {
                            "what": "migration",
                            "name": f"{m['version']:04d}_{m['name']}",
                            "action": m["action"],
                            "detail": f"{m['statements']} statement(s)",
                        }
                    )
            except JetlError as exc:
                die(str(exc), "fix the migration, then run `jetl deploy` again (streams are already declared)")
            if not any(r["what"] == "migration" for r in rows):
                rows.append(
                    {
                        "what": "migrations",
                        "name": str(migrations),
                        "action": "unchanged",
                        "detail": "nothing pending" if any(migrations.glob("*.sql")) else "no .sql files yet",
                    }
                )
        else:
            rows.append(
                {"what": "migrations", "name": str(migrations), "action": "skipped", "detail": "no such folder"}
            )
    differs = [r for r in rows if r["action"] == "differs"]
    changed = [r for r in rows if r["action"] not in ("unchanged", "skipped")]
    if json_out:
        emit_json({"dry_run": dry_run, "changed": len(changed), "differs": len(differs), "changes": rows})
    else:
        t = Table(title="jetl deploy" + (" (dry run)" if dry_run else ""))
        for col in ("what", "name", "action", "detail"):
            t.add_column(col, overflow="fold")
        colour = {"created": "green", "updated": "yellow", "applied": "green", "differs": "red"}
        for r in rows:
            c = colour.get(r["action"], "")
            t.add_row(r["what"], r["name"], f"[{c}]{r['action']}[/]" if c else r["action"], r["detail"])
        console.print(t)
        if not changed:
            console.print("nothing to change: the deployment is as declared")
    if differs:
        err_console.print(f"[red]{len(differs)} item(s) differ from the declaration and were not changed[/red]")
        raise typer.Exit(EXIT_FAILED)


# --- health ---------------------------------------------------------------------------------------------------


async def gather_health(
    s: JetlSettings,
    *,
    services: list[str],
    heartbeat_timeout: float,
    max_lag: int | None,
    stale_factor: float,
    pipelines: dict[str, Pipeline] | None,
    timeout: float,
) -> list[dict[str, Any]]:
    """Every health check as rows {check, name, status: ok|warn|fail, detail}."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import NotFoundError

    from jetl.state import (
        BUCKET,
        HEARTBEAT_PREFIX,
        get_mark,
        get_paused,
        last_failed_key,
        last_ok_key,
        watch_values,
    )
    from jetl.subjects import CONSUMERS, STREAMS

    rows: list[dict[str, Any]] = []

    def add(check: str, name: str, status: str, detail: str) -> None:
        rows.append({"check": check, "name": name, "status": status, "detail": detail})

    nc = await nats_connection(s)
    try:
        v = nc.connected_server_version
        add("nats", s.nats.url, "ok", f"nats-server {v.major}.{v.minor}.{v.patch}, JetStream")
        js = nc.jetstream()
        for spec in STREAMS.values():
            try:
                info = await js.stream_info(spec.name)
                add("stream", spec.name, "ok", f"{info.state.messages} message(s), {info.state.bytes} bytes")
            except NotFoundError:
                add("stream", spec.name, "fail", "missing (run `jetl deploy`)")
        for durable, kind in CONSUMERS.items():
            stream = STREAMS[kind].name
            try:
                ci = await js.consumer_info(stream, durable)
                pending, acking = ci.num_pending or 0, ci.num_ack_pending or 0
                status = "fail" if max_lag is not None and pending > max_lag else "ok"
                add("consumer", f"{stream}/{durable}", status, f"lag {pending} pending, {acking} awaiting ack")
            except NotFoundError:
                add("consumer", f"{stream}/{durable}", "fail", "missing (run `jetl deploy`)")
        try:
            kv = await js.key_value(BUCKET)
            add("kv", BUCKET, "ok", "present")
        except Exception:
            add("kv", BUCKET, "fail", "missing (run `jetl deploy`)")
            kv = None
        now = time.time()
        beats: dict[str, list[dict[str, Any]]] = {}
        if kv is not None:
            for raw in (await watch_values(kv, f"{HEARTBEAT_PREFIX}.>")).values():
                with_data = orjson.loads(raw)
                beats.setdefault(with_data.get("service", "?"), []).append(with_data)
        for name in services:
            seen = beats.get(name, [])
            fresh = [b for b in seen if now - float(b.get("at", 0)) <= heartbeat_timeout]
            if fresh:
                add(
                    "service",
                    name,
                    "ok",
                    f"{len(fresh)} instance(s): {', '.join(sorted(b['instance'] for b in fresh))}",
                )
            elif seen:
                last = max(float(b.get("at", 0)) for b in seen)
                add("service", name, "fail", f"not seen for {now - last:.0f}s (heartbeat every 5s)")
            else:
                add("service", name, "fail", "never seen (is it running? `jetl serve " + name + "`)")
        try:
            reply = await nc.request(subjects.control("loader", "health"), b"", timeout=timeout)
            checks = orjson.loads(reply.data).get("checks", {})
            dest = checks.get("destination", {"ok": False, "detail": "the loader has no destination check"})
            add("destination", "loader", "ok" if dest["ok"] else "fail", dest["detail"])
        except (TimeoutError, NoRespondersError, NatsTimeout):
            add("destination", "loader", "fail", "no loader answered (the loader checks the destination)")
        if pipelines is None:
            add("pipelines", "-", "warn", f"pipelines folder {s.pipelines_dir} not found: freshness not checked")
        else:
            now_dt = datetime.now(UTC)
            for p in sorted(pipelines.values(), key=lambda p: p.name):
                if p.schedule is None or kv is None:
                    continue
                paused = await get_paused(kv, p.name)
                if paused if paused is not None else p.schedule.paused:
                    add("pipeline", p.name, "ok", "paused")
                    continue
                ok = await get_mark(kv, last_ok_key(p.name))
                failed = await get_mark(kv, last_failed_key(p.name))
                if ok is not None:
                    age = now_dt - ok.at
                    if p.schedule.is_stale(ok.at, now_dt, stale_factor):
                        add(
                            "pipeline",
                            p.name,
                            "fail",
                            f"stale: last success {ok.run_id} {_ago(age.total_seconds())} "
                            f"ago, schedule {p.schedule.expression}",
                        )
                    else:
                        add("pipeline", p.name, "ok", f"last success {ok.run_id} {_ago(age.total_seconds())} ago")
                elif failed is not None:
                    add("pipeline", p.name, "fail", f"never succeeded; last failure {failed.run_id}: {failed.error}")
                else:
                    add("pipeline", p.name, "warn", "no run yet")
    finally:
        await nc.close()
    return rows


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@app.command()
def health(
    json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    services: str = typer.Option(",".join(SERVICE_NAMES), "--services", help="Services that must be running."),
    max_lag: int = typer.Option(None, "--max-lag", help="Unhealthy when a consumer has more pending messages."),
    heartbeat_timeout: float = typer.Option(15.0, "--heartbeat-timeout", help="Seconds without a heartbeat = down."),
    stale_factor: float = typer.Option(2.0, "--stale-factor", help="Stale after this many schedule periods."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for the loader's destination check."),
) -> None:
    """Check the deployment: NATS, streams, consumers and lag, services, destination, pipelines' freshness.

    Services count as up when a heartbeat is fresher than --heartbeat-timeout; the destination is checked by a
    running loader; each active scheduled pipeline's last success is held against its schedule (stale after
    --stale-factor periods is unhealthy; a pipeline that has only ever failed is unhealthy too).

    Exit codes: 0 healthy; 1 unhealthy (a `fail` row); 3 NATS unreachable.

    Example: jetl health --max-lag 10000 --json
    """
    s = settings()
    try:
        pipelines: dict[str, Pipeline] | None = load_pipelines(s)[0] if Path(s.pipelines_dir).is_dir() else None
    except typer.Exit:
        pipelines = None
    wanted = [x.strip() for x in services.split(",") if x.strip()]
    rows = run_async(
        gather_health(
            s,
            services=wanted,
            heartbeat_timeout=heartbeat_timeout,
            max_lag=max_lag,
            stale_factor=stale_factor,
            pipelines=pipelines,
            timeout=timeout,
        )
    )
    healthy = not any(r["status"] == "fail" for r in rows)
    if json_out:
        emit_json({"healthy": healthy, "checks": rows})
    else:
        title = f"jetl health: {'[green]healthy[/green]' if healthy else '[red]UNHEALTHY[/red]'}"
        _print_checks(title, rows, ("check", "name", "status", "detail"), "status")
    if not healthy:
        raise typer.Exit(EXIT_FAILED)


# --- logs -------------------------------------------------------------------------------------------------------

_LOG_KEYS = ("timestamp", "service", "level", "event", "pipeline", "run_id")


def format_log_line(line: dict[str, Any]) -> str:
    """`2026-11-25T10:00:01.123Z extractor   info   run extracted  batches=3 records=2000`."""
    extra = " ".join(f"{k}={v}" for k, v in line.items() if k not in _LOG_KEYS)
    ts = str(line.get("timestamp", ""))
    return (
        f"{ts:<27} {line.get('service', '?'):<11} {line.get('level', ''):<7} {line.get('event', '')}  {extra}".rstrip()
    )


async def read_logs(
    s: JetlSettings,
    run_id: str,
    pipeline: str | None,
    *,
    follow: bool,
    follow_seconds: float | None,
    on_line: Any,
    progress: Any = None,
) -> int:
    """Feed one run's shipped log lines to `on_line`: the kept ones sorted by time, then (follow) live ones."""
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    nc = await nats_connection(s)
    try:
        js = nc.jetstream()
        subject = subjects.pattern(Kind.LOGS, pipeline, run_id)
        try:
            info = await js.stream_info(subjects.stream_name(Kind.LOGS), subjects_filter=subject)
        except NotFoundError:
            raise ConfigError("the JETL_LOGS stream does not exist (run `jetl deploy`)") from None
        kept = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        sub = await js.subscribe(
            subject,
            ordered_consumer=True,
            stream=subjects.stream_name(Kind.LOGS),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        lines: list[dict[str, Any]] = []
        try:
            while kept and len(lines) < kept:
                try:
                    msg = await sub.next_msg(timeout=2.0)
                except Exception:
                    break
                lines.append(orjson.loads(msg.data))
                if progress is not None:
                    progress(len(lines), kept)
                if msg.metadata.num_pending == 0:
                    break
            lines.sort(key=lambda x: str(x.get("timestamp", "")))
            for line in lines:
                on_line(line)
            count = len(lines)
            if follow:
                deadline = None if follow_seconds is None else time.monotonic() + follow_seconds
                while deadline is None or time.monotonic() < deadline:
                    wait = 1.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
                    try:
                        msg = await sub.next_msg(timeout=wait)
                    except Exception:
                        continue
                    on_line(orjson.loads(msg.data))
                    count += 1
            return count
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


@app.command()
def logs(
    run_id: str = typer.Argument(..., help="Run id (see `jetl status`)."),
    pipeline: str = typer.Option(None, "--pipeline", help="Narrow to one pipeline (faster on a busy log)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines as they arrive."),
    follow_seconds: float = typer.Option(None, "--for", help="With --follow: stop after this many seconds."),
    service: str = typer.Option(None, "--service", help="Only lines from this service."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line (NDJSON)."),
) -> None:
    """Print every log line of one run across all services, in time order (services ship lines bound to a run).

    Exit codes: 0 lines printed; 1 no line kept for that run; 3 NATS unreachable.

    Example: jetl logs demo_orders-m20261125T100000ab12 --follow
    """
    s = settings()

    def show(line: dict[str, Any]) -> None:
        if service and line.get("service") != service:
            return
        if json_out:
            print(orjson.dumps(line, default=str).decode(), flush=True)
        else:
            console.print(format_log_line(line), highlight=False, markup=False, soft_wrap=True)

    with progress(not json_out, f"reading {run_id}", None, out=err_console) as update:
        n = run_async(
            read_logs(
                s,
                run_id,
                pipeline,
                follow=follow,
                follow_seconds=follow_seconds,
                on_line=show,
                progress=lambda done, total: update(completed=done, total=total),
            )
        )
    if n == 0:
        die(
            f"no log lines kept for run {run_id!r}",
            "check the run id (`jetl status`); lines are kept 14 days and shipped only with JETL_SHIP_LOGS=true",
        )


# --- schedule, pause, resume ----------------------------------------------------------------------------------


async def schedule_rows(s: JetlSettings, pipelines: list[Pipeline], n_next: int) -> tuple[list[dict[str, Any]], str]:
    """Per scheduled pipeline: schedule, pause state, last requested slot and the next runs."""
    from jetl.state import bucket, get_json, get_paused, slot_key

    now = datetime.now(UTC)
    note = ""
    kv = None
    nc = None
    try:
        nc = await nats_connection(s)
        kv = await bucket(nc)
    except JetlError as exc:
        note = f"{exc}: pause state and last slots unknown"
    rows: list[dict[str, Any]] = []
    try:
        for p in pipelines:
            c = p.schedule
            if c is None:
                continue
            override = await get_paused(kv, p.name) if kv is not None else None
            paused = override if override is not None else c.paused
            marker = await get_json(kv, slot_key(p.name)) if kv is not None else None
            ends: list[datetime] = []
            slot = c.prev_at_or_before(now)
            for _ in range(n_next):
                slot = c.next_after(slot)
                ends.append(slot)
            rows.append(
                {
                    "pipeline": p.name,
                    "cron": c.expression,
                    "tz": c.tz,
                    "catch_up": c.catch_up,
                    "max_active_runs": c.max_active_runs,
                    "paused": paused,
                    "paused_by": "jetl pause" if override is not None else "code" if c.paused else None,
                    "last_slot_end": marker,
                    "next_runs": [e.isoformat() for e in ends],
                }
            )
    finally:
        if nc is not None:
            await nc.close()
    return rows, note


@app.command()
def schedule(
    pipeline: str = typer.Argument(None, help="One pipeline (default: all scheduled ones)."),
    n_next: int = typer.Option(3, "--next", help="How many upcoming runs to show."),
    json_out: bool = typer.Option(False, "--json", help="Print the schedules as JSON."),
) -> None:
    """Show each scheduled pipeline's cron, pause state, last requested slot and next runs (UTC).

    A run for the data interval [slot, next slot) is requested when that interval ends; the times shown are those.

    Example: jetl schedule --next 5
    """
    s = settings()
    chosen = [one_pipeline(s, pipeline)] if pipeline else sorted(load_pipelines(s)[0].values(), key=lambda p: p.name)
    if pipeline and chosen[0].schedule is None:
        die(f"pipeline {pipeline!r} has no schedule", "add schedule=Cron(...) to its Pipeline", EXIT_USAGE)
    rows, note = run_async(schedule_rows(s, chosen, n_next))
    if note:
        err_console.print(f"[yellow]warning:[/yellow] {note}", highlight=False)
    if json_out:
        emit_json({"schedules": rows})
        return
    t = Table(title="jetl schedule (times in UTC)")
    for col in ("pipeline", "cron", "catch-up", "state", "last slot requested", "next runs"):
        t.add_column(col, overflow="fold")
    for r in rows:
        state = f"paused ({r['paused_by']})" if r["paused"] else "active"
        nxt = ", ".join(datetime.fromisoformat(x).strftime("%m-%d %H:%M") for x in r["next_runs"])
        t.add_row(
            r["pipeline"],
            f"{r['cron']} {r['tz']}",
            f"{r['catch_up']}, max {r['max_active_runs']}",
            state,
            r["last_slot_end"] or "-",
            nxt,
        )
    console.print(t)


def _scheduled(s: JetlSettings, name: str) -> Pipeline:
    p = one_pipeline(s, name)
    if p.schedule is None:
        die(
            f"pipeline {name!r} has no schedule, so there is nothing to pause or resume",
            "add schedule=Cron(...) to its Pipeline",
            EXIT_USAGE,
        )
    return p


@app.command()
def pause(pipeline: str = typer.Argument(..., help="Pipeline name.")) -> None:
    """Stop scheduling a pipeline (runs in flight finish; manual runs and backfills still work).

    The flag lives in NATS, so every scheduler replica honours it at once; it overrides Cron(paused=...).

    Example: jetl pause daily_sales
    """
    from jetl.state import bucket, set_paused

    s = settings()
    p = _scheduled(s, pipeline)

    async def _go() -> None:
        nc = await nats_connection(s)
        try:
            await set_paused(await bucket(nc), p.name, True)
        finally:
            await nc.close()

    run_async(_go())
    console.print(f"paused {p.name}: no more scheduled runs until `jetl resume {p.name}`")


@app.command()
def resume(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    from_now: bool = typer.Option(False, "--from-now", help="Skip the slots missed while paused."),
) -> None:
    """Schedule a paused pipeline again.

    Slots missed while paused follow its catch-up policy (`all` runs every one of them) unless --from-now skips
    them.

    Example: jetl resume daily_sales --from-now
    """
    from jetl.state import bucket, get_json, set_paused, slot_key, update_json

    s = settings()
    p = _scheduled(s, pipeline)
    assert p.schedule is not None
    cron = p.schedule

    async def _go() -> int:
        nc = await nats_connection(s)
        try:
            kv = await bucket(nc)
            now = datetime.now(UTC)
            current = cron.prev_at_or_before(now)
            if from_now:
                await update_json(kv, slot_key(p.name), lambda old: current.isoformat())
            marker = await get_json(kv, slot_key(p.name))
            missed = 0
            if isinstance(marker, str) and cron.catch_up == "all":
                missed = sum(
                    1 for _ in zip(range(10_000), cron.intervals(datetime.fromisoformat(marker), current), strict=False)
                )
            await set_paused(kv, p.name, False)
            return missed
        finally:
            await nc.close()

    missed = run_async(_go())
    console.print(f"resumed {p.name}")
    if missed:
        console.print(
            f"{missed} slot(s) missed while paused will be requested (catch-up 'all'); "
            f"`jetl pause {p.name}` then `jetl resume {p.name} --from-now` skips them",
            highlight=False,
        )
