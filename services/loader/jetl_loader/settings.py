"""Loader service settings."""

from __future__ import annotations

from jetl.settings import JetlSettings


class LoaderSettings(JetlSettings):
    """Settings of the loader service (env `JETL_...`)."""

    fetch_batch: int = 4
    """Clean batches pulled per fetch."""
    fetch_timeout: float = 0.5
    """Seconds a pull waits to fill a fetch."""
