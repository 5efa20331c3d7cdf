"""Lineage: the `_jetl_batch_id` column naming the batch that wrote each row (`<run_id>/<seq>`), like dlt's
`_dlt_load_id`.

It is what lets a replay replace exactly its parent's batches (`remove_batch`), a `--diff` compare a shadow table
with exactly the rows the parent run loaded, and `jetl counts` check the destination per run. This module holds the
column, its Arrow values and the SQL that reads and deletes by it; `ClickHouseLoader` runs them.

A removed batch is also written down, in `jetl_superseded` (one table per database, like PostgreSQL's `jetl_loads`),
and never inserted again: a parent batch that arrives after the replay that superseded it (late, or redelivered) must
not come back. On a ReplacingMergeTree it would not merely come back: a merge folds the copies of one version into the
last one inserted, the parent's, and the replay's next removal of the parent batch (its redelivery, or another replay
of the same run) would then delete the record itself.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Sequence
from typing import Any

from jetl.loaders.clickhouse.sql import _literal, quote

LINEAGE = "_jetl_batch_id"
"""The column that names the batch each row came from."""
LINEAGE_TYPE = "LowCardinality(String)"
"""One value a batch: a dictionary of one string, in the table and in the inserted Arrow column. Inserting 300k rows
into chdb, CPU: a plain String column of the batch id 0.20-0.23 s, this 0.15 s (the same as no lineage column);
tables made by an earlier version keep their String column, which a dictionary column fills at 0.17 s."""


def lineage_array(batch_id: str, n: int) -> Any:
    """The lineage column of an `n`-row batch, as a dictionary array built from buffers: pa.array, pa.scalar and
    pa.repeat import pandas, 50 MB of RSS that nothing else on the loader's path needs."""
    import pyarrow as pa

    value = batch_id.encode()
    dictionary = pa.StringArray.from_buffers(1, pa.py_buffer(array("i", [0, len(value)])), pa.py_buffer(value))
    indices = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(bytes(4 * n))])
    return pa.DictionaryArray.from_arrays(indices, dictionary)


LINEAGE_COLUMN = (LINEAGE, f"{LINEAGE_TYPE} DEFAULT ''")
"""The lineage column as a (name, type) pair of CREATE TABLE (rows written without lineage read as "")."""


def add_column(table: str) -> str:
    """ALTER TABLE giving a table made before the lineage column existed that column (its old rows read as "")."""
    return f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {quote(LINEAGE)} {LINEAGE_COLUMN[1]}"


def rows_by_run(table: str) -> str:
    """SELECT run id, row count per run id that wrote rows of `table`."""
    return f"SELECT splitByChar('/', {quote(LINEAGE)})[1] AS run, count() AS n FROM {table} GROUP BY run"


def remove_batch(table: str, batch_id: str) -> str:
    """DELETE the rows one batch wrote (a lightweight DELETE)."""
    return f"DELETE FROM {table} WHERE {quote(LINEAGE)} = {_literal(batch_id)}"


SUPERSEDED = "jetl_superseded"
"""The table naming the batches a replay removed, per table: `(tbl, batch_id)`; the loader does not insert them."""


def create_superseded(table: str) -> str:
    """CREATE the table of superseded batches (`table` quoted; one row per removed batch, repeats folded)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (tbl String, batch_id String, at DateTime DEFAULT now())"
        " ENGINE = ReplacingMergeTree ORDER BY (tbl, batch_id)"
    )


def mark_superseded(table: str, name: str, batch_id: str) -> str:
    """INSERT that batch `batch_id` of table `name` is superseded."""
    return f"INSERT INTO {table} (tbl, batch_id) VALUES ({_literal(name)}, {_literal(batch_id)})"


def is_superseded(table: str, name: str, batch_id: str) -> str:
    """SELECT 1 when batch `batch_id` of table `name` is superseded (no row otherwise)."""
    return f"SELECT 1 FROM {table} WHERE tbl = {_literal(name)} AND batch_id = {_literal(batch_id)} LIMIT 1"


def column_diff(table: str, shadow: str, columns: Sequence[str], key: Sequence[str], parent_run_id: str) -> str:
    """SELECT one count per non-key column of `columns`: the rows matched by `key` whose value in it differs."""
    parent = f"startsWith({quote(LINEAGE)}, {_literal(parent_run_id + '/')})"
    keys = ", ".join(quote(k) for k in key)
    values = [c for c in columns if c not in key]

    def side(prefix: str) -> str:
        return ", ".join(f"{quote(c)} AS {quote(prefix + c)}" for c in values)

    counts = ", ".join(
        f"countIf(cityHash64(tuple({quote('_p_' + c)})) != cityHash64(tuple({quote('_s_' + c)})))" for c in values
    )
    return (
        f"SELECT {counts} FROM (SELECT {keys}, {side('_p_')} FROM {table} WHERE {parent}) AS p"
        f" INNER JOIN (SELECT {keys}, {side('_s_')} FROM {shadow}) AS s USING ({keys})"
    )


def shadow_table(table: str, run_id: str) -> str:
    """The side table a shadow run writes to: `<table>__shadow_<run id, escaped>`.

    The escape is one-to-one (`_` -> `__`, `-` -> `_h`, any other character -> `_x<hex>_`), so runs `a-b` and `a_b`
    get two tables, and one diff cannot drop another's shadow.
    """
    return f"{table}__shadow_{re.sub(r'[^A-Za-z0-9]', _escape, run_id)}"


def _escape(m: re.Match[str]) -> str:
    char = m.group()
    return "__" if char == "_" else "_h" if char == "-" else f"_x{ord(char):x}_"


def diff(table: str, shadow: str, columns: Sequence[str], key: Sequence[str], parent_run_id: str, sample: int) -> str:
    """SELECT comparing `shadow` with the rows `parent_run_id` wrote to `table`, by a hash of `columns`.

    With a `key`: (kind, count, sample keys) rows, kind one of added, removed, changed, unchanged. Without: one row
    (added, removed, unchanged), whole rows matched as a multiset.
    """
    cols = ", ".join(quote(n) for n in columns)
    parent = f"startsWith({quote(LINEAGE)}, {_literal(parent_run_id + '/')})"
    quoted = [quote(k) for k in key]
    if quoted:
        keys = ", ".join(quoted)
        shown = quoted[0] if len(quoted) == 1 else f"tuple({keys})"
        return (
            f"SELECT multiIf(p._has = 0, 'added', s._has = 0, 'removed', p._h != s._h, 'changed', 'unchanged')"
            f" AS kind, count() AS n, groupArray({int(sample)})({shown}) AS keys FROM"
            f" (SELECT {keys}, cityHash64({cols}) AS _h, 1 AS _has FROM {table} WHERE {parent}) AS p"
            f" FULL OUTER JOIN (SELECT {keys}, cityHash64({cols}) AS _h, 1 AS _has FROM {shadow}) AS s"
            f" USING ({keys}) GROUP BY kind"
        )
    return (
        "SELECT sum(greatest(s._n, p._n) - p._n), sum(greatest(s._n, p._n) - s._n), sum(least(s._n, p._n))"
        f" FROM (SELECT cityHash64({cols}) AS _h, count() AS _n FROM {table} WHERE {parent}"
        f" GROUP BY _h) AS p FULL OUTER JOIN (SELECT cityHash64({cols}) AS _h, count() AS _n"
        f" FROM {shadow} GROUP BY _h) AS s USING (_h)"
    )
