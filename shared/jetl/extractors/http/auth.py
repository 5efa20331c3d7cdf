"""Credentials: the `Auth` protocol and the bearer, basic and API-key schemes.

Secrets are `SecretStr`s; the extractor adds `headers()` and `query()` only to requests for the configured origin
(see `jetl.extractors.http.extractor`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from pydantic import SecretStr

from jetl.errors import ConfigError


@runtime_checkable
class Auth(Protocol):
    """Credentials added to every request sent to the configured origin."""

    def headers(self) -> dict[str, str]:
        """Headers that carry the credentials."""
        ...

    def query(self) -> dict[str, str]:
        """Query parameters that carry the credentials (redacted from origins, logs and errors)."""
        ...


def _secret(value: SecretStr | str, what: str) -> SecretStr:
    secret = value if isinstance(value, SecretStr) else SecretStr(value)
    if not secret.get_secret_value():
        raise ConfigError(f"HttpExtractor: {what} is empty")
    return secret


@dataclass(frozen=True)
class BearerAuth:
    """`Authorization: Bearer <token>`."""

    token: SecretStr | str

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", _secret(self.token, "bearer token"))

    def headers(self) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {_reveal(self.token)}"}

    def query(self) -> dict[str, str]:
        """No query parameters."""
        return {}


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic auth: `Authorization: Basic base64(username:password)`."""

    username: str
    password: SecretStr | str

    def __post_init__(self) -> None:
        if not self.username or ":" in self.username:
            raise ConfigError("HttpExtractor: basic auth needs a username without ':'")
        object.__setattr__(self, "password", _secret(self.password, "basic auth password"))

    def headers(self) -> dict[str, str]:
        """The Authorization header."""
        pair = f"{self.username}:{_reveal(self.password)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}

    def query(self) -> dict[str, str]:
        """No query parameters."""
        return {}


@dataclass(frozen=True)
class ApiKeyAuth:
    """An API key sent as a header (`X-Api-Key: ...`) or a query parameter (`?api_key=...`)."""

    name: str
    value: SecretStr | str
    location: Literal["header", "query"] = "header"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("HttpExtractor: the API key needs a header or parameter name")
        if self.location not in ("header", "query"):
            raise ConfigError(f"HttpExtractor: API key location must be 'header' or 'query', not {self.location!r}")
        object.__setattr__(self, "value", _secret(self.value, f"API key {self.name!r}"))

    def headers(self) -> dict[str, str]:
        """The key's header, when it goes in a header."""
        return {self.name: _reveal(self.value)} if self.location == "header" else {}

    def query(self) -> dict[str, str]:
        """The key's parameter, when it goes in the query string."""
        return {self.name: _reveal(self.value)} if self.location == "query" else {}


def _reveal(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value
