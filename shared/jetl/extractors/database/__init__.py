"""Database extractor: any SQLAlchemy URL, a table or a SQL query, streamed through a server-side cursor.

Modules: `extractor` (`DatabaseExtractor`: the statement, the worker thread, chunks and origins), `cursor` (the
typed compound position, stored as JSON, and the query that reads after it) and `translate` (driver errors in
jetl's terms). The public name is re-exported here; import it from `jetl.extractors.database`.
"""

from jetl.extractors.database.extractor import DatabaseExtractor

__all__ = ["DatabaseExtractor"]
