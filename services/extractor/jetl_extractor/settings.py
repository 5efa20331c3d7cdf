"""Extractor service settings."""

from __future__ import annotations

from pydantic import Field

from jetl.settings import JetlSettings


class ExtractorSettings(JetlSettings):
    """Settings of the extractor service (env `JETL_...`)."""

    fetch_batch: int = 1
    """Run requests pulled per fetch."""
    concurrent_runs: int = Field(4, ge=1)
    """Runs (or partitions of one) this process extracts at once: a slow API holds one of them, not the extractor,
    so runs of other pipelines go on beside it (`jetl_extractor.handlers.RunSlots`)."""
    fetch_timeout: float = 1.0
    """Seconds a pull waits for run requests."""
    publish_concurrency: int = 4
    """Raw batches of one run in flight (awaiting their JetStream ack) at once. Measured with 30k-record (4.7 MB)
    batches: 8 took the extractor to 216-242 MB peak RSS, 4 and 2 to ~192 MB, at the same throughput."""
