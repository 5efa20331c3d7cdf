"""A pipeline: extractors, transformers, a loader, a record schema and a schedule, declared as plain Python."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, TypeAdapter

from jetl.errors import ConfigError
from jetl.protocols import Extractor, Loader, Transformer
from jetl.schedule import Cron
from jetl.subjects import check_token


def schema_hash(model: type[BaseModel]) -> str:
    """A short stable hash of a record model's JSON schema: batches carry it so a stage can tell drift."""
    text = json.dumps(model.model_json_schema(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Pipeline:
    """One pipeline. Build it in `register_pipelines()` of a `pipelines/<name>_pipeline.py` module."""

    name: str
    extractors: Sequence[Extractor]
    loader: Loader
    schema: type[BaseModel]
    transformers: Sequence[Transformer] = ()
    schedule: Cron | None = None
    batch_size: int = 10_000
    description: str = ""
    source_file: str = ""
    code_hash: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_token(self.name, "pipeline name")
        if isinstance(self.extractors, Extractor):
            self.extractors = [self.extractors]
        if not self.extractors:
            raise ConfigError(f"pipeline {self.name!r}: declare at least one extractor")
        for ex in self.extractors:
            if not isinstance(ex, Extractor):
                raise ConfigError(f"pipeline {self.name!r}: {ex!r} does not implement the Extractor protocol")
        for tr in self.transformers:
            if not isinstance(tr, Transformer):
                raise ConfigError(f"pipeline {self.name!r}: {tr!r} does not implement the Transformer protocol")
        if not isinstance(self.loader, Loader):
            raise ConfigError(f"pipeline {self.name!r}: {self.loader!r} does not implement the Loader protocol")
        if not (isinstance(self.schema, type) and issubclass(self.schema, BaseModel)):
            raise ConfigError(f"pipeline {self.name!r}: schema must be a pydantic model class")
        if not 1 <= self.batch_size <= 1_000_000:
            raise ConfigError(f"pipeline {self.name!r}: batch_size must be between 1 and 1,000,000")
        check = getattr(self.loader, "check_schema", None)
        if callable(check):
            check(self.schema)

    @cached_property
    def schema_hash(self) -> str:
        """Hash of the record schema."""
        return schema_hash(self.schema)

    @cached_property
    def adapter(self) -> TypeAdapter[list[Any]]:
        """Validates a whole batch at once."""
        return TypeAdapter(list[self.schema])  # type: ignore[name-defined]
