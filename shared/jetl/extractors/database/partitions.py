"""Planning a table run's key ranges for extractor replicas (`DatabaseExtractor.partitions`), and the clause that
reads one of them.

A range is `[lo, hi)` of the partition column (the last one `[lo, hi]`; the first one also takes the rows where the
column is NULL). The bounds are every `partition_rows`-th value in key order, read in one pass over the column
(`row_number() OVER (ORDER BY col)`, an index scan when the column is indexed), so ranges hold about the same number
of rows however the keys are spread. An incremental run's window is the rows after its start position and at or
before the furthest one, read first: that position is the run's next cursor.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jetl.errors import ConfigError, TerminalError
from jetl.extractors.database.cursor import _after_clause, _compared, _dump, _load, _Position, _through_clause

_LO, _HI = "jetl_part_lo", "jetl_part_hi"


def _plan(
    connection: Connection,
    table: sa.Table,
    primary: list[str],
    partition_column: str | None,
    partition_rows: int,
    incremental_column: str | None,
    key: str | None,
    start: _Position | None,
    where: str,
) -> tuple[list[dict[str, Any]], _Position | None]:
    """The key ranges of the run's window (as `Partition.spec`s), and the furthest position in it (None: not
    incremental, or nothing after `start`)."""
    name = partition_column or (primary[0] if len(primary) == 1 else None)
    if name is None:
        raise ConfigError(
            f"{where}: the table has no single-column primary key to partition by; declare partition_column="
        )
    dialect = connection.dialect.name
    column = _compared(table.c[name], dialect)
    binds: dict[str, Any] = {}
    window: list[sa.ColumnElement[bool]] = []
    reached: _Position | None = None
    if incremental_column is not None:
        assert key is not None
        value, tie = _compared(table.c[incremental_column], dialect), _compared(table.c[key], dialect)
        unique = key == incremental_column
        if start is not None and not start.legacy and value is not table.c[incremental_column]:
            start = _Position(str(start.stored), start.key)  # SQLite keeps dates as text: compare the text
        after = _after_clause(value, tie, unique=unique, start=start, binds=binds, legacy=table.c[incremental_column])
        window = [after] if after is not None else []
        last = connection.execute(
            sa.select(value, tie).where(value.is_not(None), *window).order_by(value.desc(), tie.desc()).limit(1), binds
        ).first()
        if last is None:
            return [], None
        reached = _Position(last[0], None if unique else last[1])
        window.append(_through_clause(value, tie, unique=unique, end=reached, binds=binds))
    number = sa.func.row_number().over(order_by=column).label("jetl_n")
    ranked = sa.select(column.label("jetl_k"), number).where(column.is_not(None), *window).subquery()
    every = (ranked.c.jetl_n - 1) % partition_rows == 0
    keys = sa.select(ranked.c.jetl_k).where(every).order_by(ranked.c.jetl_k)  # the database's order, its collation
    bounds = list(dict.fromkeys(v for (v,) in connection.execute(keys, binds)))
    top, nulls = connection.execute(
        sa.select(sa.func.max(column), sa.func.count() - sa.func.count(column)).where(*window), binds
    ).one()
    if not bounds and not nulls:
        return [], reached
    try:
        if not bounds:
            return [{"column": name, "lo": None, "hi": None, "last": True, "nulls": True}], reached
        return [
            {
                "column": name,
                "lo": _dump(lo),
                "hi": _dump(bounds[i + 1] if i + 1 < len(bounds) else top),
                "last": i + 1 == len(bounds),
                "nulls": i == 0 and bool(nulls),
            }
            for i, lo in enumerate(bounds)
        ], reached
    except TypeError as exc:
        raise ConfigError(f"{where}: partition column {name!r} cannot bound a key range: {exc}") from exc


def _admit(part: dict[str, Any], column: str | None) -> None:
    """Raise TerminalError unless `part` is a key range `_plan` could have made over `column` (the configured
    partition column, else the single-column primary key): a range arrives in a message, and must not choose another
    column to read by."""

    def bound(value: Any) -> bool:
        return value is None or (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str))

    if not (
        column is not None
        and part.get("column") == column
        and bound(part.get("lo"))
        and bound(part.get("hi"))
        and (part.get("lo") is None) == (part.get("hi") is None)
        and type(part.get("last")) is bool
        and type(part.get("nulls")) is bool
        and set(part) <= {"column", "lo", "hi", "last", "nulls", "until"}
    ):
        raise TerminalError("a partition of DatabaseExtractor is not a key range of its partition column: refused")


def _in_range(
    statement: sa.Select[Any],
    table: sa.Table,
    dialect: str,
    part: dict[str, Any],
    order: list[str],
    binds: dict[str, Any],
    partition_column: str | None,
) -> sa.Select[Any]:
    """`statement` limited to one key range of `part` (checked: `_admit`), ordered by the partition column, then
    `order` (the cursor's tie-breaker and the primary key), so each extraction of the range reads its rows in the
    same order."""
    _admit(part, partition_column)
    column = _compared(table.c[part["column"]], dialect)
    inside: list[sa.ColumnElement[bool]] = []
    if part["lo"] is not None:
        binds[_LO] = _load(*part["lo"])
        binds[_HI] = _load(*part["hi"])
        hi = sa.bindparam(_HI, type_=column.type)
        inside = [column >= sa.bindparam(_LO, type_=column.type), column <= hi if part["last"] else column < hi]
    clause = sa.and_(*inside) if inside else sa.false()
    if part["nulls"]:
        clause = sa.or_(clause, column.is_(None))
    tail = [table.c[c] for c in dict.fromkeys(order) if c != part["column"]]
    return statement.where(clause).order_by(None).order_by(column, *tail)
