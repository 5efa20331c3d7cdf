"""Versions in ClickHouse: the table engine each disposition gets, and the SQL that reads its current rows.

Every row carries `_jetl_version` (its place in the source's log, `jetl.protocols.log_version`) and `_jetl_deleted`.

| disposition | engine | ORDER BY | current rows |
|---|---|---|---|
| merge | `ReplacingMergeTree(_jetl_version, _jetl_deleted)` | the key | `FINAL`, deletes left out |
| history | `ReplacingMergeTree` | key, version | every version with its valid-from / valid-to |
| append, replace | `ReplacingMergeTree` | order_by, version | `FINAL` (replace: the newest complete run) |

A merge table keeps per key the row of the highest version whatever order inserts arrive in (a replay of an old run
carries that run's versions, so it never outranks a later one); two rows of one version are one source record
written twice (a replay's batch and its parent's, a redelivery), which every engine here folds into one. A merge
read with superseded runs to leave out takes the highest version among the rest (`LIMIT 1 BY`) instead of FINAL,
which would pick before filtering. This SQL and `jetl.loaders.versions` (the merge on read) must agree; the
property test in tests/jetl/loaders/test_versions.py holds them to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from jetl.loaders.clickhouse.lineage import LINEAGE
from jetl.loaders.clickhouse.sql import _literal, quote
from jetl.protocols import DELETED, IS_CURRENT, VALID_FROM, VALID_TO, VERSION, Disposition

COLUMNS = [(VERSION, "UInt64 DEFAULT 0"), (DELETED, "UInt8 DEFAULT 0")]
"""The version columns as (name, type) pairs of CREATE TABLE (rows written before them read as 0)."""
RUN = f"splitByChar('/', {quote(LINEAGE)})[1]"
"""The run that wrote a row, from its lineage column."""


def engine(disposition: Disposition, version_column: str | None) -> str:
    """The table engine of a disposition (`version_column`: a source column ordering a key's rows instead)."""
    if disposition == "merge":
        return f"ReplacingMergeTree({quote(version_column or VERSION)}, {quote(DELETED)})"
    return "ReplacingMergeTree"


def order_by(disposition: Disposition, columns: Sequence[str]) -> list[str]:
    """The sorting key: the key for merge, the key (or order_by) and the version otherwise."""
    return list(columns) if disposition == "merge" else [*columns, VERSION]


def add_columns(table: str) -> list[str]:
    """ALTER TABLEs giving a table made before versions existed their columns (its old rows read as 0)."""
    return [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {quote(n)} {t}" for n, t in COLUMNS]


def runs_by_version(table: str) -> str:
    """SELECT run, highest version per run that wrote rows of `table` (what replace picks its run from)."""
    return f"SELECT {RUN} AS run, max({quote(VERSION)}) FROM {table} GROUP BY run"


def _in(runs: Sequence[str]) -> str:
    return f"({', '.join(_literal(r) for r in runs)})"


def current(
    table: str,
    columns: Sequence[str],
    disposition: Disposition,
    key: Sequence[str],
    *,
    final: bool,
    version_column: str | None = None,
    only: Sequence[str] | None = None,
    leave_out: Sequence[str] = (),
) -> str:
    """SELECT the current rows of `table`: `columns` with the lineage and version columns (and the history columns
    under history). `final`: the engine folds rows (a table made before versions may not); `only`: the runs whose
    rows count (replace), `leave_out`: runs whose rows do not (superseded attempts)."""
    cols = ", ".join(quote(c) for c in [*columns, LINEAGE, VERSION])
    where = []
    if only is not None:
        where.append(f"{RUN} IN {_in(only) if only else '(NULL)'}")
    if leave_out:
        where.append(f"{RUN} NOT IN {_in(leave_out)}")
    filt = f" WHERE {' AND '.join(where)}" if where else ""
    fin = " FINAL" if final else ""
    keys = ", ".join(quote(k) for k in key)
    deleted = quote(DELETED)
    if disposition == "merge":
        version = quote(version_column or VERSION)
        if leave_out or not final:
            rows = f"SELECT *, {deleted} FROM {table}{filt} ORDER BY {version} DESC LIMIT 1 BY {keys}"
            return f"SELECT {cols} FROM ({rows}) WHERE {deleted} = 0"
        return f"SELECT {cols} FROM {table} FINAL{filt}{' AND' if filt else ' WHERE'} {deleted} = 0"
    if disposition == "history":
        v = quote(VERSION)
        window = f"PARTITION BY {keys} ORDER BY {v} ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING"
        until = f"nullIf(leadInFrame({v}, 1, 0) OVER ({window}), 0) AS {quote(VALID_TO)}"
        rows = f"SELECT *, {until} FROM {table}{fin}{filt}"
        return (
            f"SELECT {cols}, {v} AS {quote(VALID_FROM)}, {quote(VALID_TO)}, {quote(VALID_TO)} IS NULL AS"
            f" {quote(IS_CURRENT)} FROM ({rows}) WHERE {deleted} = 0"
        )
    return f"SELECT {cols} FROM {table}{fin}{filt}"


def scoped(sql: str, name: str, current_sql: str) -> str:
    """`sql` (one SELECT, or WITH ... SELECT) reading `name` as its current rows: a WITH clause named as the table
    stands in for it (the table itself is read, qualified, inside)."""
    head = sql.lstrip()
    cte = f"{quote(name)} AS ({current_sql})"
    if head[:4].upper() == "WITH" and head[4:5].isspace():
        return f"WITH {cte}, {head[5:]}"
    return f"WITH {cte} {head}"
