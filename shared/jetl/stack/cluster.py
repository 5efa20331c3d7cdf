"""A NATS JetStream cluster of nats-server child processes: the shape jetl runs on at scale (docs/cluster.md),
started on one machine for `jetl up --nats-cluster 3` and for the tests that kill, restart and cut off its nodes.

Each node has its own store folder, client port, cluster (route) port and monitoring port, a `server_name`, and
routes to every other node. Nodes listen on loopback unless given other addresses (the partition test binds one
inside a network namespace); a node's command may be prefixed (`ip netns exec NS`). The client seed list is the
nodes' URLs, comma-separated, which `NatsSettings.url` accepts as is.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetl.access import write_private
from jetl.errors import ConfigError, TransientError
from jetl.stack._process import Child, free_port, nats_server_binary, stop_process, wait_listening


@dataclass
class ClusterNode(Child):
    """One nats-server of a cluster; its ports and store survive a restart, so it rejoins as the same member."""

    name: str
    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    cluster_port: int = 0
    monitor_port: int = 0
    prefix: list[str] = field(default_factory=list)
    """Prepended to the nats-server command line (e.g. `ip netns exec NS` to run it inside a namespace)."""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    """The node's own log file."""
    log_offset: int = 0
    _config: str = ""
    """The config of its last start, which a restart reuses."""

    def __post_init__(self) -> None:
        self.log_path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        """nats://<host>:<port>, the client URL."""
        return f"nats://{self.host}:{self.port}"

    @property
    def route(self) -> str:
        """nats-route://<host>:<cluster port>, what the other nodes dial."""
        return f"nats-route://{self.host}:{self.cluster_port}"

    def allocate(self) -> None:
        """Pick free ports once; a restart keeps them."""
        self.port = self.port or free_port()
        self.cluster_port = self.cluster_port or free_port()
        self.monitor_port = self.monitor_port or free_port()

    def config(self, cluster_name: str, routes: list[str], max_payload_mb: int, authorization: str = "") -> str:
        """The node's nats.conf (with the cluster's `authorization {}` block, when it has one)."""
        route_list = ", ".join(f'"{r}"' for r in routes)
        return (
            f'server_name: "{self.name}"\n'
            f"listen: {self.host}:{self.port}\n"
            f"http: {self.host}:{self.monitor_port}\n"
            f"max_payload: {max_payload_mb * 1024 * 1024}\n"
            f'jetstream {{\n  store_dir: "{self.store_dir / "js"}"\n}}\n'
            # no_advertise: clients keep to the seed list they were given instead of addresses gossiped by peers
            f'cluster {{\n  name: "{cluster_name}"\n  listen: {self.host}:{self.cluster_port}\n'
            f"  no_advertise: true\n  routes: [{route_list}]\n}}\n" + authorization
        )

    def start(
        self, cluster_name: str, routes: list[str], max_payload_mb: int, authorization: str = "", timeout: float = 15.0
    ) -> None:
        """Start (or restart) the process and wait until it accepts clients."""
        self._config = self.config(cluster_name, routes, max_payload_mb, authorization)
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats.conf"
        write_private(conf, self._config)  # it may hold passwords
        self.spawn([*self.prefix, nats_server_binary(), "-c", str(conf)])
        assert self.proc is not None
        wait_listening(self.host, self.port, self.proc, timeout)

    def restart(self, restarts: int) -> None:
        """Start it again with the config of its last start: same ports and store, so it rejoins as the same member
        and catches up from its peers."""
        self._launch(15.0)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (lame-duck shutdown) or SIGKILL (a crash)."""
        stop_process(self.proc, kill)
        self.proc = None

    def healthy(self, timeout: float = 2.0) -> bool:
        """`/healthz` answers ok: the node is up and its JetStream assets have caught up with their leaders."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.monitor_port}/healthz", timeout=timeout) as resp:
                return bool(resp.status == 200)
        except OSError:  # HTTPError (503 while catching up) included
            return False

    def jsz(self, query: str = "", timeout: float = 2.0) -> dict[str, Any]:
        """The node's JetStream monitoring report (`/jsz`)."""
        url = f"http://{self.host}:{self.monitor_port}/jsz{'?' + query if query else ''}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data


@dataclass
class NatsCluster:
    """N nats-server nodes routed to each other as one JetStream cluster (3 by default).

    Example:
        with NatsCluster(Path(".jetl/nats-cluster")) as cluster:
            settings = NatsSettings(url=cluster.url, stream_replicas=3)
    """

    store_dir: Path
    size: int = 3
    name: str = "jetl"
    hosts: list[str] = field(default_factory=list)
    """The address each node binds (loopback unless given)."""
    prefixes: list[list[str]] = field(default_factory=list)
    """A command prefix per node (empty unless given)."""
    max_payload_mb: int = 8
    authorization: str = ""
    """Every node's `authorization {}` block (`jetl.access.Credentials.server_config()`); empty: open (tests)."""
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"a NATS cluster needs at least one node, not {self.size}")
        if self.hosts and len(self.hosts) != self.size:
            raise ConfigError(f"{len(self.hosts)} hosts for {self.size} nodes")
        hosts = self.hosts or ["127.0.0.1"] * self.size
        prefixes = self.prefixes or [[] for _ in range(self.size)]
        self.nodes = [
            ClusterNode(f"n{i + 1}", self.store_dir / f"n{i + 1}", host=hosts[i], prefix=prefixes[i])
            for i in range(self.size)
        ]

    @property
    def url(self) -> str:
        """The seed list: every node's client URL, comma-separated (`JETL_NATS__URL`)."""
        return ",".join(n.url for n in self.nodes)

    def _routes(self, i: int) -> list[str]:
        return [n.route for j, n in enumerate(self.nodes) if j != i]

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node and wait until the cluster has a JetStream meta leader that every node knows."""
        for n in self.nodes:
            n.allocate()
        try:
            for i, n in enumerate(self.nodes):
                n.start(self.name, self._routes(i), self.max_payload_mb, self.authorization)
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def start_node(self, i: int, timeout: float = 60.0) -> None:
        """Restart node `i` on its ports and store, and wait until it sees the meta leader again and has caught up."""
        self.nodes[i].start(self.name, self._routes(i), self.max_payload_mb, self.authorization)
        self.wait_ready(timeout, only=[i])

    def kill(self, i: int) -> None:
        """SIGKILL node `i`: a crash, with whatever it had not yet written to disk lost."""
        self.nodes[i].stop(kill=True)

    def stop(self) -> None:
        """Stop every node."""
        for n in self.nodes:
            n.stop()

    def meta_leader(self, i: int) -> str | None:
        """The meta leader as node `i` sees it (None while there is none, or node `i` cannot be asked)."""
        try:
            leader = self.nodes[i].jsz().get("meta_cluster", {}).get("leader")
        except OSError:
            return None
        return str(leader) if leader else None

    def wait_ready(self, timeout: float = 60.0, only: list[int] | None = None) -> None:
        """Wait until the nodes (or `only` these) name the same meta leader and report healthy (their streams
        caught up): JetStream can place streams, and a client connected to any of them is served."""
        deadline = time.monotonic() + timeout
        wanted = only if only is not None else list(range(self.size))
        seen: dict[int, str | None] = {}
        while time.monotonic() < deadline:
            seen = {i: self.meta_leader(i) for i in wanted}
            others = {self.meta_leader(j) for j in range(self.size) if j not in wanted and self.nodes[j].alive()}
            names = set(seen.values()) | (others - {None})
            if None not in names and len(names) == 1 and all(self.nodes[i].healthy() for i in wanted):
                return
            time.sleep(0.25)
        logs = "; ".join(f"{n.name}: {n.log_path}" for n in self.nodes)
        raise TransientError(f"NATS cluster {self.name!r} has no agreed meta leader after {timeout}s ({seen}); {logs}")

    def node_index(self, server_name: str) -> int:
        """The index of the node called `server_name`."""
        for i, n in enumerate(self.nodes):
            if n.name == server_name:
                return i
        raise KeyError(server_name)

    def stream_leader(self, stream: str) -> int | None:
        """The index of the node leading `stream` (the name most live nodes give), or None while it has none."""
        votes: Counter[str] = Counter()
        for n in self.nodes:
            if not n.alive():
                continue
            try:
                report = n.jsz("accounts=true&streams=true")
            except OSError:
                continue
            for account in report.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if detail.get("name") == stream and leader:
                        votes[leader] += 1
        if not votes:
            return None
        return self.node_index(votes.most_common(1)[0][0])

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
