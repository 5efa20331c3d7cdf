"""The runs `jetl status` lists, read on one plain connection: no FastStream broker, no event models, no settings
beyond the NATS section (`bench/cli_latency.py` holds the command to its goal).

`JetlClient.runs` gives the same states with the batch ledgers a replay needs loaded; `jetl status` shows totals.
"""

from __future__ import annotations

from jetl.bucket import bucket, run_states
from jetl.connection import NatsSettings, fail_fast_connection
from jetl.runstate import RunState
from jetl.topology import require_deployment


async def run_list(s: NatsSettings, pipeline: str | None = None) -> list[RunState]:
    """Every run state kept (of one pipeline, or all), newest first. A server without jetl's deployment is refused as
    `JetlClient` refuses it (NoDeployment); one that does not answer is a TransientError."""
    nc = await fail_fast_connection(s)
    try:
        await require_deployment(nc, s.url)
        return await run_states(await bucket(nc), pipeline)
    finally:
        await nc.close()
