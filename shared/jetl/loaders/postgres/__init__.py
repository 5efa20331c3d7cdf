"""PostgreSQL loader (psycopg 3, `pip install jetl[postgres]`).

Modules: `loader` (`PostgresLoader`: tables, COPY in one transaction per batch with its token in `jetl_loads`, the
dispositions read in SQL, the LineageLoader side) and `types` (record schema -> column types).
"""

from jetl.loaders.postgres.loader import PostgresLoader
from jetl.loaders.postgres.types import columns_for, pg_type

__all__ = ["PostgresLoader", "columns_for", "pg_type"]
