"""`jetl context save|show`: the stack context of an operator's host, written by hand for a deployment `jetl up`
did not start (a cluster on other hosts), and shown with its password masked."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from pydantic import SecretStr

from jetl.cli._app import app, stack_context
from jetl.cli._output import console, fail, print_json
from jetl.context import DEFAULT_DIR, StackContext, context_path
from jetl.errors import ConfigError
from jetl.redact import redact_url

context_app = typer.Typer(help="The stack context: how commands in this folder and below find a deployment.")
app.add_typer(context_app, name="context")


@context_app.command("save")
def save(
    nats_url: str = typer.Option(..., "--nats-url", help="The NATS URL, or the cluster's comma-separated seed list."),
    user: str = typer.Option("operator", "--user", help="The operator's NATS user."),
    ca_file: Path = typer.Option(None, "--ca-file", help="The CA that signs the servers' certificates (TLS on)."),
    stream_replicas: int = typer.Option(None, "--stream-replicas", help="Replicas of every stream (3 on a cluster)."),
    pipelines_dir: Path = typer.Option(None, "--pipelines-dir", help="The pipelines folder the services load."),
    data_dir: Path = typer.Option(Path(DEFAULT_DIR), "--data-dir", help="Where to write context.json."),
) -> None:
    """Write a stack context (owner-only) for a deployment on other hosts, so commands here and below reach it.

    The password is read from JETL_NATS__PASSWORD, else asked for: never a command-line option, which would show it
    in the process list and the shell's history.

    Example: JETL_NATS__PASSWORD=... jetl context save --nats-url nats://n1:4222,nats://n2:4222,nats://n3:4222
    --ca-file /etc/jetl/ca.pem --stream-replicas 3
    """
    try:
        if stream_replicas is not None and not 1 <= stream_replicas <= 5:
            raise ConfigError(f"--stream-replicas {stream_replicas}: JetStream keeps 1 to 5 replicas")
        if ca_file is not None and not ca_file.is_file():
            raise ConfigError(f"--ca-file {ca_file}: no such file")
        password = os.environ.get("JETL_NATS__PASSWORD") or typer.prompt(f"NATS password of {user}", hide_input=True)
        ctx = StackContext(
            nats_url=nats_url,
            user=user,
            password=SecretStr(password),
            data_dir=data_dir.resolve(),
            pipelines_dir=pipelines_dir.resolve() if pipelines_dir is not None else None,
            tls_ca_file=ca_file.resolve() if ca_file is not None else None,
            stream_replicas=stream_replicas,
        )
        path = ctx.save()
    except Exception as exc:
        fail(exc)
    console.print(f"stack context written to {path} (owner-only)", highlight=False)


@context_app.command("show")
def show(json_out: bool = typer.Option(False, "--json", help="Print it as JSON.")) -> None:
    """Show the stack context in force (the password masked), or say that there is none.

    Example: jetl context show --json
    """
    ctx = stack_context()
    if ctx is None:
        fail(ConfigError("no stack context here: `jetl up` writes one, or `jetl context save`"))
    data = ctx.model_dump(mode="json") | {"nats_url": ",".join(redact_url(u) for u in ctx.nats_url.split(","))}
    data["password"] = "***" if ctx.password is not None else None
    data["file"] = str(context_path(ctx.data_dir))
    if json_out:
        print_json(data, indent=True)
        return
    for key, value in data.items():
        console.print(f"{key}: {value if value is not None else '-'}", highlight=False)
