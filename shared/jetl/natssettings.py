"""The NATS section of the settings (`NatsSettings`, the `nats` field of `JetlSettings`) and its `TlsSettings`:
pydantic models, kept apart from `jetl.connection` (which re-exports them) so that a command that only reads the
state bucket connects without importing pydantic (`jetl.connection.plain_nats_settings`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


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
    full_wait: float = 86400.0
    """Seconds a service's publish to a full stream (or a full JetStream store) waits for room, its input kept alive,
    before the input is retried as a failure: ingestion pauses, and resumes by itself when the consumers downstream
    catch up or disk is freed. Commands (`jetl run`, ...) never wait: they report the full stream at once."""
    heartbeat_ttl_s: float = 3600.0
    """Seconds a service instance's heartbeat key outlives its last beat (a dead instance's key goes away)."""

    @property
    def servers(self) -> list[str]:
        """The URL list."""
        return [u.strip() for u in self.url.split(",") if u.strip()]
