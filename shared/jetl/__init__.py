"""jetl: pipelines as plain Python, four services over NATS JetStream, an event log that replays."""

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
from jetl.extractors.database import DatabaseExtractor
from jetl.extractors.file import FileExtractor
from jetl.extractors.http import HttpExtractor
from jetl.loaders.clickhouse import ClickHouseLoader, LowCardinality, Timezone
from jetl.loaders.console import ConsoleLoader
from jetl.loaders.file import FileLoader
from jetl.messages import Batch, DeadLetter, RunRequest
from jetl.pipeline import Pipeline
from jetl.protocols import Chunk, ExtractContext, Extractor, LoadContext, Loader, Transformer
from jetl.registry import clear_registry, discover, get_pipeline, get_pipeline_registry
from jetl.schedule import Cron
from jetl.settings import JetlSettings
from jetl.transformers.column import ColumnTransformer
from jetl.transformers.dedupe import DedupeTransformer
from jetl.transformers.filter import FilterTransformer
from jetl.transformers.lambda_ import LambdaTransformer
from jetl.transformers.type_ import TypeTransformer

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Chunk",
    "ClickHouseLoader",
    "ColumnTransformer",
    "ConfigError",
    "ConsoleLoader",
    "Cron",
    "DatabaseExtractor",
    "DeadLetter",
    "DedupeTransformer",
    "DestinationUnavailable",
    "DiscoveryError",
    "ExtractContext",
    "Extractor",
    "FileExtractor",
    "FileLoader",
    "FilterTransformer",
    "HttpExtractor",
    "JetlError",
    "JetlSettings",
    "LambdaTransformer",
    "LoadContext",
    "Loader",
    "LowCardinality",
    "Pipeline",
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
