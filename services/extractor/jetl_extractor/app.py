"""The extractor service: `jetl serve extractor` (any number of replicas share one durable consumer)."""

from __future__ import annotations

from faststream import FastStream

from jetl.runtime.service import build_app
from jetl_extractor.handlers import make_router
from jetl_extractor.settings import ExtractorSettings


def create_app(settings: ExtractorSettings | None = None) -> FastStream:
    """Build the extractor app."""
    return build_app("extractor", settings or ExtractorSettings(), make_router)
