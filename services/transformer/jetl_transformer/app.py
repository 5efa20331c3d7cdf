"""The transformer service: `jetl serve transformer` (any number of replicas share one durable consumer)."""

from __future__ import annotations

from faststream import FastStream

from jetl.runtime.service import build_app
from jetl_transformer.handlers import make_router
from jetl_transformer.settings import TransformerSettings


def create_app(settings: TransformerSettings | None = None) -> FastStream:
    """Build the transformer app."""
    return build_app("transformer", settings or TransformerSettings(), make_router)
