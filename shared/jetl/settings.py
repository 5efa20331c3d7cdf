"""Settings: pydantic-settings, env prefix `JETL_`, nested with `__` (e.g. `JETL_NATS__URL`).

Each service subclasses `JetlSettings` once (`jetl_loader.settings.LoaderSettings`, ...). Library code takes
settings objects as arguments and reads configuration only through them, never from `os.environ`. Two places touch
the environment without reading settings from it: `jetl.embedded.service_env` copies it into the child services it
starts, and the test helpers in `jetl.testing.servers` read `CI` and `JETL_TEST_*` to pick their servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class TlsSettings(BaseModel):
    """TLS for a client connection."""

    ca_file: Path | None = None
    """CA bundle that signs the server certificate."""
    cert_file: Path | None = None
    """Client certificate, for mutual TLS."""
    key_file: Path | None = None
    """Client private key, for mutual TLS."""
    hostname: str | None = None
    """Server name to verify, when it differs from the URL's host."""


class NatsSettings(BaseModel):
    """How to reach NATS JetStream."""

    url: str = "nats://127.0.0.1:4222"
    """One or more server URLs, comma-separated."""
    user: str | None = None
    """User name, with `password`."""
    password: SecretStr | None = None
    """Password for `user`."""
    token: SecretStr | None = None
    """Auth token."""
    nkey_seed_file: Path | None = None
    """NKey seed file."""
    creds_file: Path | None = None
    """JWT credentials file."""
    inbox_prefix: str | None = None
    """Prefix of this client's reply inboxes. Default: `_INBOX.<user>` for a user named as a jetl role (the only
    inboxes its permissions let it hear: `jetl.access`), `_INBOX` otherwise. Set it to `_INBOX.<role>` where a
    service's user is not named as its role (an NKey or creds file)."""
    tls: TlsSettings = Field(default_factory=TlsSettings)
    """TLS options; any file set here turns TLS on."""
    connect_timeout: float = 5.0
    """Seconds to wait for a connection."""
    ping_interval: float = 5.0
    """Seconds between a client's PINGs to its server. After `max_outstanding_pings` unanswered ones the connection
    is stale and the client moves to another server of the seed list: a server cut off from the network (its
    process alive, its packets dropped) is left in about `ping_interval * (max_outstanding_pings + 1)` seconds, not
    nats-py's default of minutes. A PING is a few bytes."""
    max_outstanding_pings: int = 2
    """Unanswered PINGs after which the connection counts as stale (see `ping_interval`)."""
    stream_replicas: int = 1
    """Replicas of each stream (3 on a cluster)."""
    ack_wait: float = 10.0
    """Seconds a stage may hold a message without an ack or an in_progress() beat before JetStream redelivers it:
    a crashed worker's messages come back after this; live workers beat every third of it. A consumer setting:
    `jetl deploy` / `jetl up` apply it, so set it where they run."""
    deployment_wait: float = 120.0
    """Seconds a starting service waits for `jetl deploy` to have declared the streams before it gives up."""
    stream_max_bytes: dict[str, int] = Field(default_factory=dict)
    """Byte limit per stream kind (`raw`, `clean`, `events`, `dlq`, `logs`, `run`), overriding jetl.subjects.STREAMS."""
    state_max_bytes: int = 1024 * 1024 * 1024
    """Byte limit of the run-state KV bucket (full: writes are refused, never old state dropped)."""
    run_state_ttl_days: float = 90.0
    """Days a run's state and batch keys live after their last write (rebuildable from JETL_EVENTS); cursors,
    pause flags and schedule marks never expire."""
    heartbeat_ttl_s: float = 3600.0
    """Seconds a service instance's heartbeat key outlives its last beat (a dead instance's key goes away)."""

    @property
    def servers(self) -> list[str]:
        """The URL list."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


class EmbeddedNatsSettings(BaseModel):
    """The store limits of the nats-server that `jetl up` / `jetl demo` start."""

    max_file_store_mb: int = 16 * 1024
    """JetStream file store limit, MiB: at least the sum of the streams' and the state bucket's byte limits, which
    JetStream reserves when they are declared."""
    max_memory_store_mb: int = 256
    """JetStream memory store limit, MiB (jetl keeps nothing in memory storage)."""
    memory_limit_mb: int = Field(default=384, ge=0)
    """Soft memory limit of the server process (Go's GOMEMLIMIT), MiB; 0 for none. Under it the server's garbage
    collector works harder instead of growing: its peak RSS stays near this on any input."""


class ClickHouseSettings(BaseModel):
    """How the ClickHouse loader reaches its server; `chdb:///path` runs the in-process engine."""

    dsn: str = ""
    """`chdb:///path` or `http(s)://host:port/db`; empty means chdb in the data folder."""
    user: str | None = None
    """User name for a server."""
    password: SecretStr | None = None
    """Password for a server."""
    database: str = "default"
    """Database that tables are created in."""
    secure: bool = False
    """HTTPS to the server."""


class UiSettings(BaseModel):
    """The web dashboard (`jetl ui`)."""

    host: str = "127.0.0.1"
    """Address to bind; any other than a loopback one requires `token`."""
    port: int = 8420
    """Port to bind."""
    token: SecretStr | None = None
    """Access token people give once (`?token=`, then a cookie) or send as `Authorization: Bearer`."""


class JetlSettings(BaseSettings):
    """Settings every jetl process shares."""

    model_config = SettingsConfigDict(env_prefix="JETL_", env_nested_delimiter="__", extra="ignore")

    pipelines_dir: Path = Path("pipelines")
    """Folder searched for `*_pipeline.py` modules."""
    data_dir: Path = Path(".jetl")
    """Local state: embedded NATS store, chdb folder, file loader output, logs."""
    nats: NatsSettings = Field(default_factory=NatsSettings)
    """The message bus."""
    embedded_nats: EmbeddedNatsSettings = Field(default_factory=EmbeddedNatsSettings)
    """Store limits of the embedded nats-server (`jetl up`, `jetl demo`)."""
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    """The ClickHouse destination."""
    log_level: str = "INFO"
    """Log level."""
    log_format: Literal["console", "json"] = "console"
    """`json` in production, `console` for people."""
    ship_logs: bool = True
    """Also publish log lines to JETL_LOGS so `jetl logs RUN` can pull one run's lines across services."""
    instance: str = ""
    """Name of this process in events and logs; host:pid when empty."""
    watch_pipelines: bool = True
    """Load new or changed pipeline modules while running, without a restart."""
    watch_seconds: float = 2.0
    """How often the pipelines folder is checked for new or changed modules."""
    metrics_port: int = 0
    """Serve Prometheus metrics on this port at /metrics (0: off); one port per process."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics server binds."""
    restarts: int = 0
    """How many times a supervisor (`jetl up`) restarted this service after it died; its heartbeat carries it to
    `jetl health`."""
    ui: UiSettings = Field(default_factory=UiSettings)
    """The web dashboard."""

    @property
    def chdb_path(self) -> Path:
        """The chdb folder of the embedded default."""
        return (self.data_dir / "chdb").resolve()

    @property
    def clickhouse_dsn(self) -> str:
        """The ClickHouse DSN in force."""
        return self.clickhouse.dsn or f"chdb://{self.chdb_path}"


class _ContextSource(PydanticBaseSettingsSource):
    """Values from a stack context, under the environment: with `JETL_NATS__URL` set, the context's NATS part
    (URL and credentials) is dropped whole, so its credentials never go to another server."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource, values: dict[str, Any]):
        super().__init__(settings_cls)
        self.env = env
        self.values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: __call__ gives every value at once."""
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        values = dict(self.values)
        env_nats = self.env().get("nats")
        if isinstance(env_nats, dict) and "url" in env_nats:
            values.pop("nats", None)
        return values


def settings_with_context(values: dict[str, Any], cls: type[JetlSettings] = JetlSettings) -> JetlSettings:
    """Settings with a stack context's `values` (`StackContext.settings_values`) under every environment variable:
    how CLI commands read theirs. Services never call this: they get their settings from the environment only."""

    class WithContext(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            context = _ContextSource(settings_cls, env_settings, values)
            return init_settings, env_settings, dotenv_settings, context, file_secret_settings

    settings: JetlSettings = WithContext()
    return settings
