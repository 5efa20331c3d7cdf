"""`jetl migrate` and `jetl deploy`: declare streams, consumers and the KV bucket, apply ClickHouse migrations.

Exit codes: 0 done or nothing to do; 1 a stream differs, a migration failed or was edited; 2 misnamed migration
files; 3 NATS or ClickHouse unreachable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from jetl.cli._app import app, progress, run_async, settings
from jetl.cli._output import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, console, die, err_console, print_json

if TYPE_CHECKING:
    from jetl.settings import JetlSettings


@contextmanager
def clickhouse_client(s: JetlSettings, dsn: str | None) -> Iterator[Any]:
    """A clickhouse-connect client on the configured DSN, closed afterwards (a chdb folder is freed for others)."""
    from jetl.errors import DestinationUnavailable
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
    from jetl.errors import ConfigError
    from jetl.migrations import discover_migrations

    try:
        return discover_migrations(folder)
    except ConfigError as exc:
        die(str(exc), "migration files are named NNNN_name.sql, one version each", EXIT_USAGE)


@contextmanager
def migrator(s: JetlSettings, dsn: str | None, postgres: str | None = None, schema: str = "public") -> Iterator[Any]:
    """The migrator of the destination: PostgreSQL at `postgres` (its `schema`), else ClickHouse."""
    from jetl.migrations import Migrator, PostgresMigrator

    if postgres:
        pg = PostgresMigrator(postgres, schema)
        try:
            yield pg
        finally:
            pg.close()
        return
    with clickhouse_client(s, dsn) as client:
        yield Migrator(client, s.clickhouse.database)


def run_migrations(
    s: JetlSettings,
    folder: Path,
    dsn: str | None,
    dry_run: bool,
    quiet: bool,
    postgres: str | None = None,
    schema: str = "public",
) -> list[dict[str, Any]]:
    """Apply (or list, with dry_run) the pending migrations; returns what was applied as rows."""
    migrations = _migrations(folder)
    with migrator(s, dsn, postgres, schema) as migrator_:
        total = sum(len(m.statements()) for m in migrations)
        with progress(not (dry_run or quiet), "migrating", total) as update:
            done = migrator_.apply(
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
    postgres: str = typer.Option(
        None,
        "--postgres",
        help="Migrate this PostgreSQL (postgresql:// URL) instead; --dir defaults to migrations/postgres.",
    ),
    schema: str = typer.Option("public", "--schema", help="The PostgreSQL schema that records the migrations."),
) -> None:
    """Apply versioned SQL migrations to ClickHouse (or PostgreSQL with --postgres), in order, each once (recorded
    in jetl_migrations).

    With chdb (the default) the folder opens in one process at a time: run this while the loader is stopped.
    Exit codes: 0 applied or nothing to do; 1 a statement failed or an applied file was edited (--status: a
    migration changed or is missing); 2 misnamed files; 3 ClickHouse unreachable.

    Example: jetl migrate --dry-run; jetl migrate; jetl migrate --status --json
    """
    from rich.table import Table

    from jetl.errors import JetlError

    s = settings()
    if postgres and folder == Path("migrations/clickhouse"):
        folder = Path("migrations/postgres")
    try:
        if status:
            migrations = _migrations(folder)
            with migrator(s, dsn, postgres, schema) as migrator_:
                states = migrator_.status(migrations)
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
                print_json({"migrations": rows, "pending": sum(r["state"] == "pending" for r in rows)}, indent=True)
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
        applied = run_migrations(s, folder, dsn, dry_run, json_out, postgres, schema)
    except JetlError as exc:
        die(str(exc), "fix the migration (ClickHouse DDL is not transactional: make statements re-runnable)")
    if json_out:
        print_json({"dry_run": dry_run, "migrations": applied}, indent=True)
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
    from rich.table import Table

    from jetl.bus import nats_connection
    from jetl.errors import JetlError
    from jetl.registry import pipeline_names
    from jetl.topology import declare

    s = settings()

    async def _declare() -> list[Any]:
        nc = await nats_connection(s)
        try:
            return await declare(nc, s.nats, pipelines=pipeline_names(s.pipelines_dir), dry_run=dry_run)
        finally:
            await nc.close()

    spinning = console.is_terminal and not json_out
    with console.status("declaring streams, consumers and KV bucket") if spinning else nullcontext():
        changes = run_async(_declare())
    rows = [{"what": c.what, "name": c.name, "action": c.action, "detail": c.detail} for c in changes]
    if dry_run:
        for r in rows:
            r["action"] = {"created": "would create", "updated": "would update", "deleted": "would delete"}.get(
                r["action"], r["action"]
            )
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
        print_json({"dry_run": dry_run, "changed": len(changed), "differs": len(differs), "changes": rows}, indent=True)
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
