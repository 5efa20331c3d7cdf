"""ClickHouse loader (clickhouse-connect): `chdb:///path` in-process, or an HTTP(S) server URL.

Modules: `loader` (`ClickHouseLoader`: tables, inserts, dedup, merge mode, the LineageLoader side), `types` (record
schema -> column types, the `LowCardinality` and `Timezone` markers), `client` (one client per DSN, driver errors in
jetl's terms), `sql` (quoting and CREATE TABLE) and `lineage` (the `_jetl_batch_id` column and the SQL that uses
it). The public names are re-exported here; import them from `jetl.loaders.clickhouse`.
"""

from jetl.loaders.clickhouse.client import close_clients, get_client
from jetl.loaders.clickhouse.loader import ClickHouseLoader
from jetl.loaders.clickhouse.types import LowCardinality, Timezone, ch_column, ch_type, columns_for

__all__ = [
    "ClickHouseLoader",
    "LowCardinality",
    "Timezone",
    "ch_column",
    "ch_type",
    "close_clients",
    "columns_for",
    "get_client",
]
