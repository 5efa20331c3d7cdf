"""jetl: pipelines as plain Python, four services over NATS JetStream, an event log that replays."""

import typing as _typing

from jetl.errors import (
    ConfigError,
    DestinationUnavailable,
    DiscoveryError,
    JetlError,
    RecordError,
    RecordIssue,
    TerminalError,
    TransientError,
)
from jetl.messages import Batch, DeadLetter, RunRequest
from jetl.pipeline import Pipeline
from jetl.protocols import Chunk, Deletes, ExtractContext, Extractor, LoadContext, Loader, Transformer
from jetl.registry import clear_registry, discover, get_pipeline, get_pipeline_registry
from jetl.schedule import Cron
from jetl.settings import JetlSettings

# Connectors are imported on first use: sqlalchemy, httpx and clickhouse-connect cost ~2 s to import, and a
# service or CLI command should pay only for the ones its pipelines use.
_LAZY = {
    "ApiKeyAuth": "jetl.extractors.http",
    "BasicAuth": "jetl.extractors.http",
    "BearerAuth": "jetl.extractors.http",
    "ClickHouseLoader": "jetl.loaders.clickhouse",
    "ArrowExpression": "jetl.transformers.column",
    "ColumnTransformer": "jetl.transformers.column",
    "ConsoleLoader": "jetl.loaders.console",
    "CursorPagination": "jetl.extractors.http",
    "DatabaseExtractor": "jetl.extractors.database",
    "DedupeTransformer": "jetl.transformers.dedupe",
    "FileExtractor": "jetl.extractors.file",
    "FileLoader": "jetl.loaders.file",
    "FilterTransformer": "jetl.transformers.filter",
    "HttpExtractor": "jetl.extractors.http",
    "Incremental": "jetl.extractors.http",
    "LambdaTransformer": "jetl.transformers.lambda_",
    "LinkHeaderPagination": "jetl.extractors.http",
    "LowCardinality": "jetl.loaders.clickhouse",
    "NextUrlPagination": "jetl.extractors.http",
    "OffsetPagination": "jetl.extractors.http",
    "PageNumberPagination": "jetl.extractors.http",
    "PostgresLoader": "jetl.loaders.postgres",
    "Timezone": "jetl.loaders.clickhouse",
    "TypeTransformer": "jetl.transformers.type_",
}

if _typing.TYPE_CHECKING:
    from jetl.extractors.database import DatabaseExtractor
    from jetl.extractors.file import FileExtractor
    from jetl.extractors.http import (
        ApiKeyAuth,
        BasicAuth,
        BearerAuth,
        CursorPagination,
        HttpExtractor,
        Incremental,
        LinkHeaderPagination,
        NextUrlPagination,
        OffsetPagination,
        PageNumberPagination,
    )
    from jetl.loaders.clickhouse import ClickHouseLoader, LowCardinality, Timezone
    from jetl.loaders.console import ConsoleLoader
    from jetl.loaders.file import FileLoader
    from jetl.loaders.postgres import PostgresLoader
    from jetl.transformers.column import ArrowExpression, ColumnTransformer
    from jetl.transformers.dedupe import DedupeTransformer
    from jetl.transformers.filter import FilterTransformer
    from jetl.transformers.lambda_ import LambdaTransformer
    from jetl.transformers.type_ import TypeTransformer


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jetl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "ApiKeyAuth",
    "ArrowExpression",
    "BasicAuth",
    "Batch",
    "BearerAuth",
    "Chunk",
    "ClickHouseLoader",
    "ColumnTransformer",
    "ConfigError",
    "ConsoleLoader",
    "Cron",
    "CursorPagination",
    "DatabaseExtractor",
    "DeadLetter",
    "DedupeTransformer",
    "Deletes",
    "DestinationUnavailable",
    "DiscoveryError",
    "ExtractContext",
    "Extractor",
    "FileExtractor",
    "FileLoader",
    "FilterTransformer",
    "HttpExtractor",
    "Incremental",
    "JetlError",
    "JetlSettings",
    "LambdaTransformer",
    "LinkHeaderPagination",
    "LoadContext",
    "Loader",
    "LowCardinality",
    "NextUrlPagination",
    "OffsetPagination",
    "PageNumberPagination",
    "Pipeline",
    "PostgresLoader",
    "RecordError",
    "RecordIssue",
    "RunRequest",
    "TerminalError",
    "Timezone",
    "Transformer",
    "TransientError",
    "TypeTransformer",
    "__version__",
    "clear_registry",
    "discover",
    "get_pipeline",
    "get_pipeline_registry",
]
