"""The stack context file: found from any folder below the stack's, owner-only, env overrides it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from jetl.context import StackContext, find_context, read_context
from jetl.errors import ConfigError


def test_a_context_is_written_owner_only_and_found_from_a_subfolder(tmp_path: Path) -> None:
    data = tmp_path / ".jetl"
    path = StackContext(nats_url="nats://127.0.0.1:4999", password=SecretStr("pw"), data_dir=data).save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_context(None, None, start=deep) == path
    ctx = read_context(path)
    assert ctx.nats_url == "nats://127.0.0.1:4999" and ctx.password is not None
    assert ctx.password.get_secret_value() == "pw"
    assert "pw" not in repr(ctx)


def test_the_data_folder_and_an_explicit_context_take_precedence(tmp_path: Path) -> None:
    one = StackContext(nats_url="nats://127.0.0.1:1", data_dir=tmp_path / "one").save()
    two = StackContext(nats_url="nats://127.0.0.1:2", data_dir=tmp_path / "two").save()
    assert find_context(None, tmp_path / "two", start=tmp_path / "one") == two
    assert find_context(tmp_path / "one", tmp_path / "two") == one
    assert find_context(one, None) == one
    assert find_context(None, tmp_path / "none") is None
    with pytest.raises(ConfigError, match="no stack context"):
        find_context(tmp_path / "missing.json", None)


def test_a_file_that_is_not_a_context_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "context.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=str(bad)):
        read_context(bad)


def test_a_context_carries_the_clusters_ca_and_replicas_into_the_settings(tmp_path: Path) -> None:
    from jetl.settings import settings_with_context

    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    ctx = StackContext(
        nats_url="nats://n1:4222,nats://n2:4222",
        password=SecretStr("pw"),
        data_dir=tmp_path,
        tls_ca_file=ca,
        stream_replicas=3,
    )
    s = settings_with_context(read_context(ctx.save()).settings_values())
    assert s.nats.tls.ca_file == ca and s.nats.stream_replicas == 3 and s.nats.user == "operator"


def test_jetl_context_save_and_show_never_print_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from jetl.cli import app

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JETL_NATS__PASSWORD", "s3cret-pw")
    runner = CliRunner()
    seeds = "nats://n1:4222,nats://n2:4222,nats://n3:4222"
    saved = runner.invoke(app, ["context", "save", "--nats-url", seeds, "--ca-file", str(ca), "--stream-replicas", "3"])
    assert saved.exit_code == 0, saved.output
    assert "s3cret-pw" not in saved.output
    path = tmp_path / ".jetl" / "context.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.delenv("JETL_NATS__PASSWORD")
    (tmp_path / "deeper").mkdir()
    monkeypatch.chdir(tmp_path / "deeper")
    shown = runner.invoke(app, ["context", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["nats_url"] == seeds and data["stream_replicas"] == 3 and data["tls_ca_file"] == str(ca)
    assert data["password"] == "***" and "s3cret-pw" not in shown.output
    refused = runner.invoke(app, ["context", "save", "--nats-url", seeds, "--stream-replicas", "7"], input="pw\n")
    assert refused.exit_code != 0 and "1 to 5 replicas" in refused.output


def test_a_context_others_may_change_is_ignored_with_a_warning_and_refused_when_named(tmp_path: Path) -> None:
    path = StackContext(nats_url="nats://127.0.0.1:1", data_dir=tmp_path / ".jetl").save()
    deep = tmp_path / "a"
    deep.mkdir()
    warned: list[str] = []
    path.chmod(0o622)  # group and others may write it
    assert find_context(None, None, start=deep, warn=warned.append) is None
    assert find_context(None, tmp_path / ".jetl", warn=warned.append) is None
    assert len(warned) == 2 and all("may be changed by other users" in w for w in warned)
    with pytest.raises(ConfigError, match="not used"):
        find_context(path, None)
    path.chmod(0o600)
    (tmp_path / ".jetl").chmod(0o777)  # a folder where anyone may replace the file
    assert find_context(None, None, start=deep, warn=warned.append) is None and "replace" in warned[-1]
    (tmp_path / ".jetl").chmod(0o700)
    assert find_context(None, None, start=deep, warn=warned.append) == path  # the control: its own, owner-only


def test_a_context_another_user_owns_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = StackContext(nats_url="nats://127.0.0.1:1", data_dir=tmp_path / ".jetl").save()
    import jetl.context as context

    monkeypatch.setattr(context.os, "getuid", lambda: path.stat().st_uid + 1)  # as seen by another user
    warned: list[str] = []
    assert find_context(None, None, start=tmp_path, warn=warned.append) is None
    assert "belongs to another user" in warned[0]
