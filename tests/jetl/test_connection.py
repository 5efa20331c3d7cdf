"""The quick read of the NATS settings (`jetl.connection.quick_nats_settings`, on `jetl status`'s path) against
pydantic-settings (`JetlSettings`, `settings_with_context`): on any environment and context they agree, or the quick
read declines and the command takes the full path."""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from jetl.connection import (
    PLAIN_FIELDS,
    NatsSettings,
    PlainNats,
    PlainTls,
    Secret,
    connect_options,
    env_value,
    plain_nats_settings,
    quick_nats_settings,
)
from jetl.context import StackContext
from jetl.settings import JetlSettings, settings_with_context

NAMES = [
    "JETL_NATS__URL",
    "jetl_nats__url",
    "JETL_NATS__USER",
    "JETL_NATS__PASSWORD",
    "JETL_NATS__TOKEN",
    "JETL_NATS__CREDS_FILE",
    "JETL_NATS__INBOX_PREFIX",
    "JETL_NATS__CONNECT_TIMEOUT",
    "JETL_NATS__MAX_OUTSTANDING_PINGS",
    "JETL_NATS__STREAM_REPLICAS",
    "JETL_NATS__TLS__CA_FILE",
    "Jetl_Nats__Tls__Hostname",
    "JETL_NATS__TLS__CERT_FILE",
    # what only pydantic-settings reads: JSON values, and names that are no field
    "JETL_NATS",
    "JETL_NATS__TLS",
    "JETL_NATS__STREAM_MAX_BYTES",
    "JETL_NATS__NO_SUCH",
    # other settings, which the NATS section never takes
    "JETL_NATSY",
    "JETL_DATA_DIR",
    "JETL_LOG_LEVEL",
]
VALUES = st.sampled_from(
    ["nats://a:4222", "nats://a:1,nats://b:2", "alice", "", "3", "2.5", "x", "/tmp/ca.pem", '{"url": "nats://j:1"}']
)
CONTEXTS = st.one_of(
    st.none(),
    st.builds(
        lambda password, ca, replicas: StackContext(
            nats_url="nats://ctx:4222",
            password=SecretStr(password) if password else None,
            data_dir="/tmp/ctx",
            tls_ca_file=ca,
            stream_replicas=replicas,
        ),
        st.sampled_from(["", "pw"]),
        st.sampled_from([None, "/tmp/ctx-ca.pem"]),
        st.sampled_from([None, 3]),
    ),
)


def _plain(s: NatsSettings) -> dict[str, Any]:
    """Every value, secrets included (SecretStr compares by value, but shows none in a failure)."""
    out = s.model_dump()
    for key in ("password", "token"):
        out[key] = out[key].get_secret_value() if out[key] is not None else None
    return out


@settings(max_examples=300, deadline=None)
@given(env=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=6), ctx=CONTEXTS)
def test_the_quick_read_agrees_with_pydantic_settings_or_declines(
    env: dict[str, str], ctx: StackContext | None
) -> None:
    values = ctx.settings_values() if ctx is not None else None
    with mock.patch.dict(os.environ, env, clear=True):
        try:
            full: Any = (settings_with_context(values) if values is not None else JetlSettings()).nats
        except (ValidationError, SettingsError):  # a bad value: the command stops either way
            full = ValidationError
        try:
            nats = values["nats"] if values is not None else None
            quick: Any = quick_nats_settings(os.environ, nats if isinstance(nats, dict) else None)
        except ValidationError:
            quick = ValidationError
    if quick is None:  # declined: only where pydantic-settings reads JSON or a name that is no field
        assert {k.upper() for k in env} & {
            "JETL_NATS",
            "JETL_NATS__TLS",
            "JETL_NATS__STREAM_MAX_BYTES",
            "JETL_NATS__NO_SUCH",
        }
    elif full is ValidationError or quick is ValidationError:
        assert quick is full
    else:
        assert _plain(quick) == _plain(full)


def test_the_quick_read_takes_the_common_environments() -> None:
    ctx = StackContext(nats_url="nats://ctx:4222", password=SecretStr("pw"), data_dir="/tmp/ctx")
    nats = ctx.settings_values()["nats"]
    assert isinstance(nats, dict)
    quick = quick_nats_settings({"JETL_NATS__USER": "alice", "HOME": "/root"}, nats)
    assert quick is not None and quick.url == "nats://ctx:4222" and quick.user == "alice"
    assert quick.password is not None and quick.password.get_secret_value() == "pw"  # env over context, field by field
    quick = quick_nats_settings({"JETL_NATS__URL": "nats://elsewhere:4222"}, nats)
    assert quick is not None and quick.password is None  # another server: the context's credentials stay out
    assert quick_nats_settings({}, None) == NatsSettings()


def test_a_top_level_setting_is_read_as_pydantic_settings_reads_it() -> None:
    assert env_value({"JETL_DATA_DIR": "/a", "PATH": "/bin"}, "data_dir") == "/a"
    assert env_value({"jetl_data_dir": "/b"}, "data_dir") == "/b"  # any case, as pydantic-settings reads it
    assert env_value({"JETL_DATA_DIRS": "/c"}, "data_dir") is None


def _options(s: Any) -> dict[str, Any]:
    out = connect_options(s)
    out.pop("error_cb")  # a closure of its own per call
    return out


@settings(max_examples=300, deadline=None)
@given(env=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=6))
def test_the_plain_read_connects_as_pydantic_settings_would_or_declines(env: dict[str, str]) -> None:
    """`plain_nats_settings` (no pydantic, no context): where it reads the environment, the connection it makes is
    the one `JetlSettings().nats` makes; it declines any NATS setting but plain text ones."""
    with mock.patch.dict(os.environ, env, clear=True):
        plain = plain_nats_settings(os.environ)
        if plain is None:
            assert {k.upper().removeprefix("JETL_NATS__") for k in env if k.upper().startswith("JETL_NATS")} - {
                f.upper() for f in PLAIN_FIELDS
            }
            return
        full = JetlSettings().nats
    assert _options(plain) == _options(full)
    assert (plain.url, plain.user, plain.inbox_prefix) == (full.url, full.user, full.inbox_prefix)


def test_plain_settings_have_natssettings_defaults() -> None:
    full = NatsSettings()
    for f in dataclasses.fields(PlainNats):
        if f.name != "tls":
            assert getattr(PlainNats(), f.name) == getattr(full, f.name), f.name
    assert dataclasses.asdict(PlainTls()) == full.tls.model_dump()
    assert PlainNats().servers == full.servers
    assert "pw" not in repr(PlainNats(password=Secret("pw")))
