"""`jetl ui`: the web dashboard, served on this machine unless given an access token."""

from __future__ import annotations

import typer

from jetl.cli._app import app, settings
from jetl.cli._output import EXIT_USAGE, console, die, failing


@app.command()
def ui(
    host: str = typer.Option(None, help="Address to bind (default 127.0.0.1; others need --token)."),
    port: int = typer.Option(None, help="Port (default 8420)."),
    token: str = typer.Option(
        None, help="Access token (or JETL_UI__TOKEN); required off loopback.", show_default=False
    ),
) -> None:
    """Serve the dashboard: runs live, the ledger, pipelines, dead letters and replay diffs.

    It finds the stack like every command does and binds 127.0.0.1:8420. Binding any other address needs an
    access token, which people give once as ?token=... (then a cookie keeps it).

    Example: jetl ui   (then open http://127.0.0.1:8420)
    """
    from pydantic import SecretStr

    from jetl.errors import ConfigError
    from jetl.ui.security import check_bind

    s = settings()
    if host is not None:
        s.ui.host = host
    if port is not None:
        s.ui.port = port
    if token:
        s.ui.token = SecretStr(token)
    try:
        check_bind(s.ui.host, s.ui.token.get_secret_value() if s.ui.token else None)
    except ConfigError as exc:
        die(str(exc), "people then open it once with ?token=...", EXIT_USAGE)
    with failing():
        import uvicorn

        from jetl.ui.app import create_app

        web = create_app(s)
    console.print(f"jetl dashboard on http://{s.ui.host}:{s.ui.port}  (NATS {s.nats.url}; Ctrl-C stops)")
    uvicorn.run(web, host=s.ui.host, port=s.ui.port, log_level="warning")
