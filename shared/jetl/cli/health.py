"""`jetl health`: the deployment's checks (jetl.ops.health) as a table or JSON; exit 1 when one fails."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from jetl.cli._app import app, load_pipelines, run_async, settings
from jetl.cli._output import EXIT_FAILED, print_checks, print_json

if TYPE_CHECKING:
    from jetl.ops.health import HealthCheck
    from jetl.pipeline import Pipeline


@app.command()
def health(
    json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    services: str = typer.Option(
        "extractor,transformer,loader,scheduler", "--services", help="Services that must be running."
    ),
    max_lag: int = typer.Option(None, "--max-lag", help="Unhealthy when a consumer has more pending messages."),
    heartbeat_timeout: float = typer.Option(15.0, "--heartbeat-timeout", help="Seconds without a heartbeat = down."),
    stale_factor: float = typer.Option(2.0, "--stale-factor", help="Stale after this many schedule periods."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for the loader's destination check."),
) -> None:
    """Check the deployment: NATS, streams, consumers and lag, services, destination, pipelines' freshness.

    Services count as up when a heartbeat is fresher than --heartbeat-timeout; the destination is checked by a
    running loader; each active scheduled pipeline's last success is held against its schedule (stale after
    --stale-factor periods is unhealthy; a pipeline that has only ever failed is unhealthy too).

    Exit codes: 0 healthy; 1 unhealthy (a `fail` row); 3 NATS unreachable.

    Example: jetl health --max-lag 10000 --json
    """
    from jetl.ops.client import JetlClient
    from jetl.ops.health import gather_health, healthy

    s = settings()
    try:
        pipelines: dict[str, Pipeline] | None = load_pipelines(s)[0] if Path(s.pipelines_dir).is_dir() else None
    except typer.Exit:
        pipelines = None
    wanted = [x.strip() for x in services.split(",") if x.strip()]

    async def _checks() -> list[HealthCheck]:
        async with JetlClient(s, deployed=False) as jc:  # a missing stream is a check that fails, not an error
            return await gather_health(
                jc,
                services=wanted,
                heartbeat_timeout=heartbeat_timeout,
                max_lag=max_lag,
                stale_factor=stale_factor,
                pipelines=pipelines,
                timeout=timeout,
            )

    checks = run_async(_checks())
    ok = healthy(checks)
    rows = [c.model_dump() for c in checks]
    if json_out:
        print_json({"healthy": ok, "checks": rows}, indent=True)
    else:
        title = f"jetl health: {'[green]healthy[/green]' if ok else '[red]UNHEALTHY[/red]'}"
        print_checks(title, rows, ("check", "name", "status", "detail"), "status")
    if not ok:
        raise typer.Exit(EXIT_FAILED)
