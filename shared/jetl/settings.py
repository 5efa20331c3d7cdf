"""Settings: pydantic-settings, env prefix `JETL_`, nested with `__` (e.g. `JETL_NATS__URL`).

Each service subclasses `JetlSettings` once (`jetl_loader.settings.LoaderSettings`, ...). Library code takes
settings objects as arguments and reads configuration only through them, never from `os.environ`. Two places touch
the environment without reading settings from it: `jetl.embedded.service_env` copies it into the child services it
starts, and the test helpers in `jetl.testing.servers` read `CI` and `JETL_TEST_*` to pick their servers. The CLI
reads the NATS section of these same settings quickly (`jetl.connection.quick_nats_settings`: the environment it is
handed, validated by `NatsSettings` itself), and a differential test holds it to what pydantic-settings reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from jetl.connection import NatsSettings as NatsSettings
from jetl.connection import TlsSettings as TlsSettings


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
    restart_free_mb: int = Field(default=64, ge=0)
    """Free MiB the file system under the JetStream store must have again before `jetl up` restarts a server whose
    store filled the disk (`jetl.stack.disk`): a server that hit "no space left on device" takes no writes to that
    stream until it is restarted."""


class ArchiveSettings(BaseModel):
    """Where every raw batch is kept for good once JETL_RAW lets it go (`jetl.archive`)."""

    url: str = ""
    """A folder, or an object store by URL (`s3://bucket/prefix`, `gs://bucket/prefix`, `file:///path`); empty means
    the `archive` folder in the data dir. Every transformer (the writer) and extractor (replays read it) must reach
    the same one."""
    max_bytes: int = 0
    """Byte limit of the archive, shown by `jetl health` (warn at 80%, fail at 95%) and enforced on writes; 0: none
    but the room of the file system under a folder."""
    keep_days: dict[str, float] = Field(default_factory=dict)
    """Days a pipeline's archived runs are kept after their last batch was archived, by pipeline name (`"*"`: every
    pipeline not named); a pipeline under neither keeps its runs for good. A removed run can no longer replay."""


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
    ca_file: Path | None = None
    """The CA that signs the server's certificate (a private CA, as compose's), to verify HTTPS against."""


class UiSettings(BaseModel):
    """The web dashboard (`jetl ui`)."""

    host: str = "127.0.0.1"
    """Address to bind; any other than a loopback one requires `token`."""
    port: int = 8420
    """Port to bind."""
    token: SecretStr | None = None
    """Access token people give once (`?token=`, then a cookie) or send as `Authorization: Bearer` (from the
    environment, JETL_UI__TOKEN: a command line would show it in the process list)."""
    token_file: Path | None = None
    """A file holding the access token instead (yours, owner-only), read at start."""
    require_token: bool = False
    """Require the access token on loopback too (other local users, other browsers' pages)."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names the dashboard answers to besides loopback ones and its bind address (the name behind a proxy):
    a request naming any other host (a DNS-rebinding page) is refused."""


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
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    """The raw-batch archive: the log's history past JETL_RAW's window."""
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
    metrics_host: str = "127.0.0.1"
    """Address the metrics server binds: this machine only unless set (a container sets 0.0.0.0 for its network)."""
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
    def archive_url(self) -> str:
        """The archive in force: `archive.url`, or the `archive` folder of the data dir."""
        return self.archive.url or str((self.data_dir / "archive").resolve())

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
