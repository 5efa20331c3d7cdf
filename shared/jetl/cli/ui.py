"""`jetl ui`: the web dashboard, served on this machine unless given an access token."""

from __future__ import annotations

from pathlib import Path

import typer

from jetl.cli._app import app, settings
from jetl.cli._output import EXIT_USAGE, console, die, failing


@app.command()
def ui(
    host: str = typer.Option(None, help="Address to bind (default 127.0.0.1; others need an access token)."),
    port: int = typer.Option(None, help="Port (default 8420)."),
    token_file: Path = typer.Option(
        None,
        help="File holding the access token, owner-only (or JETL_UI__TOKEN / JETL_UI__TOKEN_FILE); required off "
        "loopback. Never the token itself on a command line: the process list shows it to every local user.",
        show_default=False,
    ),
    require_token: bool = typer.Option(None, "--require-token", help="Require the access token on loopback too."),
) -> None:
    """Serve the dashboard: runs live, the ledger, pipelines, dead letters and replay diffs.

    It finds the stack like every command does and binds 127.0.0.1:8420. Binding any other address needs an
    access token (from JETL_UI__TOKEN or --token-file), which people give once as ?token=... (then a cookie keeps
    it). It answers only to loopback names, its bind address and JETL_UI__ALLOWED_HOSTS.

    Example: jetl ui   (then open http://127.0.0.1:8420)
    """
    from jetl.errors import ConfigError

    s = settings()
    if host is not None:
        s.ui.host = host
    if port is not None:
        s.ui.port = port
    if token_file is not None:
        s.ui.token_file = token_file
    if require_token:
        s.ui.require_token = True
    with failing():
        import uvicorn

        from jetl.ui.app import create_app
    try:
        web = create_app(s)
    except ConfigError as exc:
        die(str(exc), "people then open it once with ?token=...", EXIT_USAGE)

    console.print(f"jetl dashboard on http://{s.ui.host}:{s.ui.port}  (NATS {s.nats.url}; Ctrl-C stops)")
    uvicorn.run(web, host=s.ui.host, port=s.ui.port, log_level="warning")
