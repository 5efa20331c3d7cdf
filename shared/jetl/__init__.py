"""jetl: pipelines as plain Python, four services over NATS JetStream, an event log that replays.

Every public name is written once, in `_EXPORTS` (name -> the module that defines it), which makes `__all__`,
`dir(jetl)` and the imports. Every name is imported on first use: sqlalchemy, httpx and clickhouse-connect cost ~2 s
to import, pydantic and the core's models a few hundred ms, and a service or CLI command pays only for what it
touches (`jetl --help` imports none of them: bench/cli_latency.py). A connector whose extra is not installed raises
an ImportError that names the extra to install. The `TYPE_CHECKING` imports are for type checkers, which cannot read
`_EXPORTS`; tests/jetl/test_exported_members.py holds them to it.
"""

import importlib as _importlib
import typing as _typing

_EXPORTS: dict[str, str] = {
    # errors (one taxonomy: ack, nak or dead-letter)
    "ConfigError": "jetl.errors",
    "DestinationUnavailable": "jetl.errors",
    "DiscoveryError": "jetl.errors",
    "JetlError": "jetl.errors",
    "RecordError": "jetl.errors",
    "RecordIssue": "jetl.errors",
    "TerminalError": "jetl.errors",
    "TransientError": "jetl.errors",
    # contracts, pipelines and their registry, settings
    "Batch": "jetl.messages",
    "DeadLetter": "jetl.messages",
    "RunRequest": "jetl.messages",
    "Contract": "jetl.pipeline",
    "Pipeline": "jetl.pipeline",
    "Check": "jetl.protocols",
    "Chunk": "jetl.protocols",
    "Deletes": "jetl.protocols",
    "ExtractContext": "jetl.protocols",
    "Extractor": "jetl.protocols",
    "LoadContext": "jetl.protocols",
    "Loader": "jetl.protocols",
    "Partition": "jetl.protocols",
    "Transformer": "jetl.protocols",
    "Unreadable": "jetl.protocols",
    "clear_registry": "jetl.registry",
    "discover": "jetl.registry",
    "get_pipeline": "jetl.registry",
    "get_pipeline_registry": "jetl.registry",
    "Cron": "jetl.schedule",
    "JetlSettings": "jetl.settings",
    # connectors (imported on first use)
    "Incremental": "jetl.extractors.incremental",
    "FileExtractor": "jetl.extractors.file",
    "ApiKeyAuth": "jetl.extractors.http",
    "BasicAuth": "jetl.extractors.http",
    "BearerAuth": "jetl.extractors.http",
    "CursorPagination": "jetl.extractors.http",
    "HttpExtractor": "jetl.extractors.http",
    "Limits": "jetl.extractors.http",
    "LinkHeaderPagination": "jetl.extractors.http",
    "NextUrlPagination": "jetl.extractors.http",
    "OffsetPagination": "jetl.extractors.http",
    "PageNumberPagination": "jetl.extractors.http",
    "Retry": "jetl.extractors.http",
    "DatabaseExtractor": "jetl.extractors.database",
    "PostgresCDCExtractor": "jetl.extractors.cdc",
    "ArrowExpression": "jetl.transformers.column",
    "ColumnTransformer": "jetl.transformers.column",
    "DedupeTransformer": "jetl.transformers.dedupe",
    "FilterTransformer": "jetl.transformers.filter",
    "LambdaTransformer": "jetl.transformers.lambda_",
    "TypeTransformer": "jetl.transformers.type_",
    "ClickHouseLoader": "jetl.loaders.clickhouse",
    "LowCardinality": "jetl.loaders.clickhouse",
    "Timezone": "jetl.loaders.clickhouse",
    "ConsoleLoader": "jetl.loaders.console",
    "FileLoader": "jetl.loaders.file",
    "PostgresLoader": "jetl.loaders.postgres",
    "IcebergLoader": "jetl.loaders.iceberg",
}

_EXTRAS = {
    "jetl.extractors.http": "http",
    "jetl.extractors.database": "db",
    "jetl.loaders.clickhouse": "clickhouse",
    "jetl.loaders.postgres": "postgres",
    "jetl.loaders.iceberg": "iceberg",
}
"""Connector modules whose dependencies are an extra (`pip install 'jetl[<extra>]'`)."""

if _typing.TYPE_CHECKING:
    from jetl.errors import ConfigError as ConfigError
    from jetl.errors import DestinationUnavailable as DestinationUnavailable
    from jetl.errors import DiscoveryError as DiscoveryError
    from jetl.errors import JetlError as JetlError
    from jetl.errors import RecordError as RecordError
    from jetl.errors import RecordIssue as RecordIssue
    from jetl.errors import TerminalError as TerminalError
    from jetl.errors import TransientError as TransientError
    from jetl.extractors.cdc import PostgresCDCExtractor as PostgresCDCExtractor
    from jetl.extractors.database import DatabaseExtractor as DatabaseExtractor
    from jetl.extractors.file import FileExtractor as FileExtractor
    from jetl.extractors.http import ApiKeyAuth as ApiKeyAuth
    from jetl.extractors.http import BasicAuth as BasicAuth
    from jetl.extractors.http import BearerAuth as BearerAuth
    from jetl.extractors.http import CursorPagination as CursorPagination
    from jetl.extractors.http import HttpExtractor as HttpExtractor
    from jetl.extractors.http import Limits as Limits
    from jetl.extractors.http import LinkHeaderPagination as LinkHeaderPagination
    from jetl.extractors.http import NextUrlPagination as NextUrlPagination
    from jetl.extractors.http import OffsetPagination as OffsetPagination
    from jetl.extractors.http import PageNumberPagination as PageNumberPagination
    from jetl.extractors.http import Retry as Retry
    from jetl.extractors.incremental import Incremental as Incremental
    from jetl.loaders.clickhouse import ClickHouseLoader as ClickHouseLoader
    from jetl.loaders.clickhouse import LowCardinality as LowCardinality
    from jetl.loaders.clickhouse import Timezone as Timezone
    from jetl.loaders.console import ConsoleLoader as ConsoleLoader
    from jetl.loaders.file import FileLoader as FileLoader
    from jetl.loaders.iceberg import IcebergLoader as IcebergLoader
    from jetl.loaders.postgres import PostgresLoader as PostgresLoader
    from jetl.messages import Batch as Batch
    from jetl.messages import DeadLetter as DeadLetter
    from jetl.messages import RunRequest as RunRequest
    from jetl.pipeline import Contract as Contract
    from jetl.pipeline import Pipeline as Pipeline
    from jetl.protocols import Check as Check
    from jetl.protocols import Chunk as Chunk
    from jetl.protocols import Deletes as Deletes
    from jetl.protocols import ExtractContext as ExtractContext
    from jetl.protocols import Extractor as Extractor
    from jetl.protocols import LoadContext as LoadContext
    from jetl.protocols import Loader as Loader
    from jetl.protocols import Partition as Partition
    from jetl.protocols import Transformer as Transformer
    from jetl.protocols import Unreadable as Unreadable
    from jetl.registry import clear_registry as clear_registry
    from jetl.registry import discover as discover
    from jetl.registry import get_pipeline as get_pipeline
    from jetl.registry import get_pipeline_registry as get_pipeline_registry
    from jetl.schedule import Cron as Cron
    from jetl.settings import JetlSettings as JetlSettings
    from jetl.transformers.column import ArrowExpression as ArrowExpression
    from jetl.transformers.column import ColumnTransformer as ColumnTransformer
    from jetl.transformers.dedupe import DedupeTransformer as DedupeTransformer
    from jetl.transformers.filter import FilterTransformer as FilterTransformer
    from jetl.transformers.lambda_ import LambdaTransformer as LambdaTransformer
    from jetl.transformers.type_ import TypeTransformer as TypeTransformer


def _load(name: str) -> _typing.Any:
    path = _EXPORTS[name]
    try:
        module = _importlib.import_module(path)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(path)
        if extra is None or (exc.name or "jetl").split(".")[0] == "jetl":
            raise
        raise ImportError(
            f"jetl.{name} needs the {extra!r} extra ({exc.name} is not installed): pip install 'jetl[{extra}]'",
            name=exc.name,
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __getattr__(name: str) -> _typing.Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jetl' has no attribute {name!r}")
    return _load(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = sorted([*_EXPORTS, "__version__"])
