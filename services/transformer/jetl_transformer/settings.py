"""Transformer service settings."""

from __future__ import annotations

from jetl.settings import JetlSettings


class TransformerSettings(JetlSettings):
    """Settings of the transformer service (env `JETL_...`)."""

    fetch_batch: int = 1
    """Raw batches pulled per fetch. FastStream's batch pull waits until a fetch is full or `fetch_timeout` has
    passed, so more than 1 holds a lone batch back (4 added up to 0.5 s to a 100-record run); a batch already
    holds up to the pipeline's `batch_size` records (10,000 by default), so one a fetch costs nothing in throughput."""
    fetch_timeout: float = 0.5
    """Seconds a pull waits to fill a fetch (with one batch a fetch: how long an idle pull lingers)."""
    archive_fetch_batch: int = 16
    """Raw batches the archiver pulls per fetch: each is one write, with nothing held back by a fuller fetch that
    matters (a lone batch waits at most `fetch_timeout` to be archived, and it is already on its way to the loader)."""
