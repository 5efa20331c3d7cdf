"""`StackContext`, what a `jetl up` context file holds (see `jetl.context`, which re-exports it): a pydantic model,
kept apart so that finding the context file, or finding none, imports no pydantic (`jetl status`)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, SecretStr

from jetl.access import write_private
from jetl.contextfile import CONTEXT_FILE


class StackContext(BaseModel):
    """What a command needs to reach a stack."""

    nats_url: str
    """Where the stack's NATS listens (a comma-separated seed list for a cluster)."""
    user: str = "operator"
    """The CLI's NATS user."""
    password: SecretStr | None = None
    """Its password."""
    data_dir: Path
    """The stack's data folder."""
    pipelines_dir: Path | None = None
    """The pipelines folder the stack's services load (so `jetl run` from a subfolder checks the same ones)."""
    tls_ca_file: Path | None = None
    """The CA that signs the NATS servers' certificates (TLS on when given), for a cluster reached over TLS."""
    stream_replicas: int | None = None
    """Replicas of every stream and the state bucket (3 on a three-node cluster), so `jetl deploy` from this
    context keeps them."""

    def settings_values(self) -> dict[str, object]:
        """The settings this context supplies (under every environment variable)."""
        nats: dict[str, object] = {"url": self.nats_url}
        if self.password is not None:  # a user without a password: a stack that generated no credentials
            nats["user"] = self.user
            nats["password"] = self.password.get_secret_value()
        if self.tls_ca_file is not None:
            nats["tls"] = {"ca_file": str(self.tls_ca_file)}
        if self.stream_replicas is not None:
            nats["stream_replicas"] = self.stream_replicas
        values: dict[str, object] = {"nats": nats, "data_dir": str(self.data_dir)}
        if self.pipelines_dir is not None:
            values["pipelines_dir"] = str(self.pipelines_dir)
        return values

    @property
    def port(self) -> int | None:
        """The port of its (first) NATS URL, if it names one."""
        host = self.nats_url.split(",")[0].rsplit("@", 1)[-1]
        _, sep, port = host.rpartition(":")
        return int(port) if sep and port.isdigit() else None

    def save(self) -> Path:
        """Write it to its data folder, owner-only."""
        path = self.data_dir / CONTEXT_FILE
        data = self.model_dump(mode="json")
        data["password"] = self.password.get_secret_value() if self.password is not None else None
        write_private(path, json.dumps(data, indent=2))
        return path
