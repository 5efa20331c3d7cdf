"""Extractor service settings."""

from __future__ import annotations

from jetl.settings import JetlSettings


class ExtractorSettings(JetlSettings):
    """Settings of the extractor service (env `JETL_...`)."""

    fetch_batch: int = 1
    """Run requests pulled per fetch; one run is extracted at a time per process."""
    fetch_timeout: float = 1.0
    """Seconds a pull waits for run requests."""
    publish_concurrency: int = 8
    """Raw batches in flight (awaiting their JetStream ack) at once."""
