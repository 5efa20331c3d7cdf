"""Transformer service settings."""

from __future__ import annotations

from jetl.settings import JetlSettings


class TransformerSettings(JetlSettings):
    """Settings of the transformer service (env `JETL_...`)."""

    fetch_batch: int = 4
    """Raw batches pulled per fetch."""
    fetch_timeout: float = 0.5
    """Seconds a pull waits to fill a fetch."""
