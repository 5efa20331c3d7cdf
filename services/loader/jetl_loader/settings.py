"""Loader service settings."""

from __future__ import annotations

from jetl.settings import JetlSettings


class LoaderSettings(JetlSettings):
    """Settings of the loader service (env `JETL_...`)."""

    fetch_batch: int = 1
    """Clean batches pulled per fetch. FastStream's batch pull waits until a fetch is full or `fetch_timeout` has
    passed, so more than 1 holds a lone batch back (4 added up to 0.5 s to a 100-record run); a batch is already
    up to max_payload of records, so one a fetch costs nothing in throughput."""
    fetch_timeout: float = 0.5
    """Seconds a pull waits to fill a fetch (with one batch a fetch: how long an idle pull lingers)."""
    outage_budget_s: float = 120.0
    """Seconds a destination may be unavailable (down, unreachable, refusing connections) before a batch gives up on
    it: the loader retries the write for this long in all (`jetl.runtime.stage.ride_out_outage`), then the batch is
    dead-lettered and its run fails, naming the batch. 0: the ack rule's backoff alone (about 4 s)."""
