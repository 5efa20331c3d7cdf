"""The loader service: `jetl serve loader` (any number of replicas share one durable consumer)."""

from __future__ import annotations

from faststream import FastStream

from jetl.service import build_app
from jetl_loader.handlers import make_router
from jetl_loader.settings import LoaderSettings


def create_app(settings: LoaderSettings | None = None) -> FastStream:
    """Build the loader app."""
    return build_app("loader", settings or LoaderSettings(), make_router)
