"""ClickHouse migrations: file discovery, SQL splitting, and the apply/status logic against a recording client.

The same logic against real chdb (through the CLI, in subprocesses) is in tests/integration/test_migrate_cli.py.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from jetl.errors import ConfigError, TerminalError
from jetl.migrations import Migrator, discover_migrations, split_sql


def test_split_sql_ignores_semicolons_in_strings_identifiers_and_comments() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE t (s String DEFAULT 'a;b', `we;ird` UInt8) ENGINE = Memory;
    /* block; comment */ INSERT INTO t VALUES ('it''s; fine', 1);
    # hash comment;
    SELECT "x;y";;
    """
    assert split_sql(sql) == [
        "CREATE TABLE t (s String DEFAULT 'a;b', `we;ird` UInt8) ENGINE = Memory",
        "INSERT INTO t VALUES ('it''s; fine', 1)",
        'SELECT "x;y"',
    ]


def test_discovery_orders_by_version_and_ignores_other_files(tmp_path: Path) -> None:
    (tmp_path / "0010_later.sql").write_text("SELECT 10")
    (tmp_path / "0002_first.sql").write_text("SELECT 2")
    (tmp_path / "README.md").write_text("not a migration")
    assert [(m.version, m.name) for m in discover_migrations(tmp_path)] == [(2, "first"), (10, "later")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_short.sql": "SELECT 1"}, "named NNNN_name.sql"),
        ({"0001_a.sql": "SELECT 1", "0001_b.sql": "SELECT 2"}, "version 1 is also"),
        ({"0001_empty.sql": "-- nothing here\n"}, "no SQL statements"),
    ],
)
def test_bad_migration_files_are_config_errors(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        discover_migrations(tmp_path)


class Result:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class FakeClickHouse:
    """Records statements; keeps jetl_migrations rows; fails on statements containing FAIL."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.rows: list[list[Any]] = []
        self.table = False

    def command(self, sql: str) -> None:
        if "FAIL" in sql:
            raise RuntimeError("Code: 62. Syntax error")
        if "CREATE TABLE IF NOT EXISTS `default`.`jetl_migrations`" in sql:
            self.table = True
        self.commands.append(sql)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Result:
        if "system.tables" in sql:
            return Result([(1 if self.table else 0,)])
        return Result([tuple(r) for r in sorted(self.rows)])

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        assert table == "default.jetl_migrations"
        self.rows.extend(rows)


def migrations_dir(tmp_path: Path) -> Path:
    d = tmp_path / "migrations"
    d.mkdir()
    (d / "0001_create.sql").write_text(
        "CREATE TABLE a (x UInt8) ENGINE = Memory;\nCREATE TABLE b (y UInt8) ENGINE = Memory;"
    )
    (d / "0002_view.sql").write_text("CREATE VIEW v AS SELECT * FROM a")
    return d


def user_statements(client: FakeClickHouse) -> list[str]:
    return [c for c in client.commands if "jetl_migrations" not in c and not c.startswith("CREATE DATABASE")]


def test_apply_runs_pending_in_order_once_and_records_them(tmp_path: Path) -> None:
    client, d = FakeClickHouse(), migrations_dir(tmp_path)
    m = Migrator(client)
    assert [s.state for s in m.status(discover_migrations(d))] == ["pending", "pending"]
    assert [x.version for x in m.apply(discover_migrations(d), dry_run=True)] == [1, 2]
    assert user_statements(client) == []  # a dry run changes nothing
    assert [x.version for x in m.apply(discover_migrations(d))] == [1, 2]
    assert [s.split(" (")[0] for s in user_statements(client)] == [
        "CREATE TABLE a",
        "CREATE TABLE b",
        "CREATE VIEW v AS SELECT * FROM a",
    ]
    assert m.apply(discover_migrations(d)) == []  # idempotent
    assert [s.state for s in m.status(discover_migrations(d))] == ["applied", "applied"]
    (d / "0003_more.sql").write_text("CREATE TABLE c (z UInt8) ENGINE = Memory")
    assert [x.version for x in m.apply(discover_migrations(d))] == [3]


def test_a_failing_statement_stops_the_run_and_is_not_recorded(tmp_path: Path) -> None:
    client, d = FakeClickHouse(), migrations_dir(tmp_path)
    (d / "0002_view.sql").write_text("CREATE VIEW v AS SELECT 1; FAIL HERE")
    (d / "0003_never.sql").write_text("CREATE TABLE never (x UInt8) ENGINE = Memory")
    with pytest.raises(TerminalError, match=r"0002_view: statement 2 of 2 failed: Code: 62"):
        Migrator(client).apply(discover_migrations(d))
    states = {s.version: s.state for s in Migrator(client).status(discover_migrations(d))}
    assert states == {1: "applied", 2: "pending", 3: "pending"}
    assert not any("never" in c for c in client.commands)


def test_an_applied_migration_that_changed_is_reported_and_blocks_the_run(tmp_path: Path) -> None:
    client, d = FakeClickHouse(), migrations_dir(tmp_path)
    Migrator(client).apply(discover_migrations(d))
    (d / "0001_create.sql").write_text("CREATE TABLE a (x UInt16) ENGINE = Memory")
    (d / "0003_next.sql").write_text("SELECT 3")
    states = Migrator(client).status(discover_migrations(d))
    assert [(s.version, s.state) for s in states] == [(1, "changed"), (2, "applied"), (3, "pending")]
    with pytest.raises(TerminalError, match="0001_create: file changed after it was applied"):
        Migrator(client).apply(discover_migrations(d))


def test_an_applied_migration_whose_file_is_gone_is_reported(tmp_path: Path) -> None:
    client, d = FakeClickHouse(), migrations_dir(tmp_path)
    Migrator(client).apply(discover_migrations(d))
    (d / "0002_view.sql").unlink()
    states = Migrator(client).status(discover_migrations(d))
    assert [(s.version, s.state) for s in states] == [(1, "applied"), (2, "missing")]
    assert isinstance(states[1].applied_at, datetime)


def test_database_name_is_checked() -> None:
    with pytest.raises(ConfigError, match="invalid ClickHouse database"):
        Migrator(FakeClickHouse(), "x; DROP")
