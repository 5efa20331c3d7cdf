"""The runs `jetl status` lists, read on one plain connection: no FastStream broker, no event models, no settings
beyond the NATS section (`bench/cli_latency.py` holds the command to its goal).

Each state is a `jetl.runsummary.RunSummary` where its value is surely what the tracker writes (no pydantic), else
the `RunState` pydantic validates. `JetlClient.runs` gives the same states with the batch ledgers a replay needs
loaded; `jetl status` shows totals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jetl.bucket import bucket, run_summaries
from jetl.connection import PlainNats, fail_fast_connection
from jetl.runsummary import RunSummary
from jetl.topology import require_deployment

if TYPE_CHECKING:
    from jetl.connection import NatsSettings
    from jetl.runstate import RunState


async def run_list(s: NatsSettings | PlainNats, pipeline: str | None = None) -> list[RunState | RunSummary]:
    """Every run state kept (of one pipeline, or all), newest first. A server without jetl's deployment is refused as
    `JetlClient` refuses it (NoDeployment); one that does not answer is a TransientError."""
    nc = await fail_fast_connection(s)
    try:
        await require_deployment(nc, s.url)
        return await run_summaries(await bucket(nc), pipeline)
    finally:
        await nc.close()
