"""Versioned SQL migrations for ClickHouse (`migrations/clickhouse/NNNN_name.sql`) and PostgreSQL
(`migrations/postgres/`, `PostgresMigrator`), applied in order, once each.

Each applied migration is recorded in `<database>.jetl_migrations` (version, name, checksum, applied_at), so running
`jetl migrate` again applies only what is new. A file whose content changed after it was applied is reported and
stops the run: write a new migration instead of editing an old one.

ClickHouse DDL is not transactional: a migration of several statements that fails half-way leaves the first ones
applied and is not recorded, so the next run executes it again from the top. Write statements that can run twice
(`CREATE TABLE IF NOT EXISTS`, `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`).

chdb (the embedded default, `chdb://<folder>`): a folder can be opened by one process at a time, so migrate while the
loader is stopped (`jetl deploy` before `jetl up`). Against a ClickHouse server it runs at any time.

Schema evolution (`schema_contract="evolve"`, `jetl.evolution`) writes its DDL into the same history: each change
the loader applies is a migration `evolve_<table>` numbered from `EVOLVE_FROM` up (`Migrator.evolve`), so it never
takes a version a file will have; `status` shows those as `evolved`. On PostgreSQL the change is planned, applied
and recorded in one transaction under the advisory lock the loader takes to create tables (`jetl:<schema>`), so
several loader replicas apply it once: the second finds the columns there and plans nothing. On ClickHouse (no
transactions) a process applies one change at a time, every statement is idempotent (`ADD COLUMN IF NOT EXISTS`,
`MODIFY COLUMN` to the type it has), and the record's insert is deduplicated on the change (its name and SQL): two
loader processes on one server that planned the same change at the same moment apply it twice (the second changes
nothing) and record it once. The same change planned again later (after a hand-written migration narrowed the
column back) is applied but, within the table's last 1,000 inserts, not recorded again.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from jetl.errors import ConfigError, DestinationUnavailable, TerminalError

TABLE = "jetl_migrations"
_FILE = re.compile(r"^(\d{4,})_([A-Za-z0-9_\-]+)\.sql$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

State = Literal["applied", "pending", "changed", "missing", "evolved"]

EVOLVE_FROM = 1_000_000
"""Migrations that schema evolution applies are numbered from here up (files are numbered below)."""
_EVOLVING = threading.Lock()


@dataclass(frozen=True)
class Migration:
    """One `NNNN_name.sql` file."""

    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        """Hash of the file's content: an applied migration must never change."""
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """`0001_create_orders`."""
        return self.path.stem

    def statements(self) -> list[str]:
        """The SQL statements of the file, in order."""
        return split_sql(self.sql)


@dataclass
class MigrationStatus:
    """Where one migration stands against the database."""

    version: int
    name: str
    state: State
    checksum: str = ""
    applied_at: datetime | None = None
    detail: str = ""


def split_sql(text: str) -> list[str]:
    """Split a script on `;` outside quotes, backticks and comments; comments are dropped, empty statements too."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"`":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            buf.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("--", i) or c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            buf.append(" ")
        elif c == ";":
            out.append("".join(buf).strip())
            buf = []
            i += 1
        else:
            buf.append(c)
            i += 1
    out.append("".join(buf).strip())
    return [s for s in out if s]


def discover_migrations(folder: Path | str) -> list[Migration]:
    """Every migration in `folder`, by version; a misnamed `.sql` file or a repeated version is a ConfigError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"migrations folder {folder} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            raise ConfigError(f"{path}: migration files are named NNNN_name.sql (e.g. 0001_create_orders.sql)")
        version = int(m.group(1))
        if version in found:
            raise ConfigError(f"{path}: version {version} is also {found[version].path.name}")
        migration = Migration(version, m.group(2), path, path.read_text())
        if not migration.statements():
            raise ConfigError(f"{path}: no SQL statements")
        found[version] = migration
    return [found[v] for v in sorted(found)]


class Migrator:
    """Applies migrations through a clickhouse-connect client and records them in `jetl_migrations`."""

    def __init__(self, client: Any, database: str = "default") -> None:
        if not _IDENT.match(database):
            raise ConfigError(f"invalid ClickHouse database name {database!r}")
        self.client = client
        self.database = database

    @property
    def table(self) -> str:
        """`db`.`jetl_migrations`."""
        return f"`{self.database}`.`{TABLE}`"

    def ensure_table(self) -> None:
        """Create the database and the tracking table if missing."""
        self._command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        self._command(
            f"CREATE TABLE IF NOT EXISTS {self.table} (version UInt32, name String, checksum String, "
            "applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
        )

    def applied(self) -> dict[int, tuple[str, str, datetime]]:
        """{version: (name, checksum, applied_at)} recorded so far (nothing when the table does not exist yet)."""
        exists = self._query(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": self.database, "t": TABLE},
        )
        if not exists or not int(exists[0][0]):
            return {}
        rows = self._query(f"SELECT version, name, checksum, applied_at FROM {self.table} ORDER BY version")
        return {int(v): (str(n), str(c), _aware(a)) for v, n, c, a in rows}

    def status(self, migrations: list[Migration]) -> list[MigrationStatus]:
        """Each migration's state: applied, pending, changed (edited after it was applied) or missing (no file)."""
        done = self.applied()
        out: list[MigrationStatus] = []
        for m in migrations:
            if m.version not in done:
                out.append(MigrationStatus(m.version, m.name, "pending", m.checksum))
                continue
            _name, checksum, at = done[m.version]
            if checksum != m.checksum:
                detail = f"file changed after it was applied (checksum {checksum} -> {m.checksum})"
                out.append(MigrationStatus(m.version, m.name, "changed", m.checksum, at, detail))
            else:
                out.append(MigrationStatus(m.version, m.name, "applied", checksum, at))
        known = {m.version for m in migrations}
        for version, (name, checksum, at) in done.items():
            if version not in known and version >= EVOLVE_FROM:
                out.append(MigrationStatus(version, name, "evolved", checksum, at, "applied by schema evolution"))
            elif version not in known:
                out.append(MigrationStatus(version, name, "missing", checksum, at, "applied, but its file is gone"))
        return sorted(out, key=lambda s: s.version)

    def apply(
        self,
        migrations: list[Migration],
        *,
        dry_run: bool = False,
        on_step: Callable[[Migration, int, int], None] | None = None,
    ) -> list[Migration]:
        """Apply the pending migrations in order; returns them. Refuses to run when an applied one changed."""
        if not dry_run:
            self.ensure_table()
        states = self.status(migrations)
        changed = [s for s in states if s.state == "changed"]
        if changed:
            first = changed[0]
            raise TerminalError(
                f"migration {first.version:04d}_{first.name}: {first.detail}; add a new migration instead of "
                "editing an applied one"
            )
        pending_versions = {s.version for s in states if s.state == "pending"}
        pending = [m for m in migrations if m.version in pending_versions]
        if dry_run:
            return pending
        for m in pending:
            self._apply_one(m, on_step)
        return pending

    def evolve(self, plan: Callable[[Migrator], tuple[str, list[str]]]) -> Migration | None:
        """Apply what `plan` says the destination lacks (it reads the destination through `read` and names the
        change: `evolve_<table>__<changes>`) as the next evolution migration; None when it lacks nothing."""
        with _EVOLVING:
            name, statements = plan(self)
            if not statements:
                return None
            self.ensure_table()
            # two loader processes that planned the same change before either applied it record it once: the
            # record's insert is deduplicated on the change (its name and SQL), whatever version each one chose
            self._command(f"ALTER TABLE {self.table} MODIFY SETTING non_replicated_deduplication_window = 1000")
            m = evolution(max([EVOLVE_FROM - 1, *self.applied()]) + 1, name, statements)
            self._apply_one(m, None, token=f"{m.name}:{m.checksum}")
            return m

    def read(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of a query on the destination (for an evolution's plan)."""
        return self._query(sql, params)

    def _apply_one(
        self, m: Migration, on_step: Callable[[Migration, int, int], None] | None, token: str | None = None
    ) -> None:
        """Run one migration's statements, then record it (deduplicated on `token` when given)."""
        statements = m.statements()
        for i, sql in enumerate(statements, 1):
            try:
                self.client.command(sql)
            except Exception as exc:
                raise TerminalError(
                    f"migration {m.label}: statement {i} of {len(statements)} failed: {str(exc)[:400]}"
                ) from exc
            if on_step is not None:
                on_step(m, i, len(statements))
        self.client.insert(
            f"{self.database}.{TABLE}",
            [[m.version, m.name, m.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
            **({"settings": {"insert_deduplication_token": token}} if token else {}),
        )

    def _command(self, sql: str) -> None:
        try:
            self.client.command(sql)
        except Exception as exc:
            raise DestinationUnavailable(f"ClickHouse refused {sql.split('(')[0].strip()!r}: {exc}") from exc

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.client.query(sql, parameters=params).result_rows]
        except Exception as exc:
            raise DestinationUnavailable(f"ClickHouse query failed: {exc}") from exc


class PostgresMigrator(Migrator):
    """Applies `migrations/postgres/` through psycopg, recording them in `<schema>.jetl_migrations`. PostgreSQL DDL
    is transactional: each migration runs in one transaction with its record, so a failed one leaves nothing."""

    def __init__(self, dsn: str, schema: str = "public") -> None:
        if not _IDENT.match(schema):
            raise ConfigError(f"invalid PostgreSQL schema name {schema!r}")
        import psycopg

        try:
            self.conn = psycopg.connect(dsn.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        except psycopg.OperationalError as exc:
            raise DestinationUnavailable(f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}") from None
        self.client = self.conn
        self.database = schema

    @property
    def table(self) -> str:
        """ "schema"."jetl_migrations"."""
        return f'"{self.database}"."{TABLE}"'

    def ensure_table(self) -> None:
        """Create the schema and the tracking table if missing."""
        self._command(f'CREATE SCHEMA IF NOT EXISTS "{self.database}"')
        self._command(
            f"CREATE TABLE IF NOT EXISTS {self.table} (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL)"
        )

    def applied(self) -> dict[int, tuple[str, str, datetime]]:
        """{version: (name, checksum, applied_at)} recorded so far (nothing when the table does not exist yet)."""
        if not self._query("SELECT to_regclass(%s)", (self.table,))[0][0]:
            return {}
        rows = self._query(f"SELECT version, name, checksum, applied_at FROM {self.table} ORDER BY version")
        return {int(v): (str(n), str(c), _aware(a)) for v, n, c, a in rows}

    def evolve(self, plan: Callable[[Migrator], tuple[str, list[str]]]) -> Migration | None:
        """`Migrator.evolve` in one transaction under the advisory lock the loader creates tables under: a replica
        that waited plans again and finds nothing to do."""
        self.ensure_table()
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"jetl:{self.database}",))
            name, statements = plan(self)
            if not statements:
                return None
            m = evolution(max([EVOLVE_FROM - 1, *self.applied()]) + 1, name, statements)
            self._apply_one(m, None)
            return m

    def _apply_one(
        self, m: Migration, on_step: Callable[[Migration, int, int], None] | None, token: str | None = None
    ) -> None:
        statements = m.statements()
        with self.conn.transaction(), self.conn.cursor() as cur:
            for i, sql in enumerate(statements, 1):
                try:
                    cur.execute(sql.encode())
                except Exception as exc:
                    raise TerminalError(
                        f"migration {m.label}: statement {i} of {len(statements)} failed (nothing of it is "
                        f"applied): {str(exc)[:400]}"
                    ) from exc
                if on_step is not None:
                    on_step(m, i, len(statements))
            cur.execute(
                f"INSERT INTO {self.table} (version, name, checksum, applied_at) VALUES (%s, %s, %s, %s)",
                (m.version, m.name, m.checksum, datetime.now(UTC)),
            )

    def _command(self, sql: str) -> None:
        try:
            self.conn.execute(sql.encode())
        except Exception as exc:
            raise DestinationUnavailable(f"PostgreSQL refused {sql.split('(')[0].strip()!r}: {exc}") from exc

    def _query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.conn.execute(sql.encode() if params is None else sql, params).fetchall()]
        except Exception as exc:
            raise DestinationUnavailable(f"PostgreSQL query failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def evolution(version: int, name: str, statements: list[str]) -> Migration:
    """The migration of an evolution's statements (no file: it is written to the history only)."""
    sql = "".join(f"{s};\n" for s in statements)
    return Migration(version, name[:200], Path(f"{version:07d}_{name[:200]}.sql"), sql)


def _aware(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
