"""Per-service NATS permissions come from the subject builder: each service reaches its own stage only."""

from __future__ import annotations

import stat
from pathlib import Path

from jetl import subjects
from jetl.access import ROLES, Credentials, permissions


def _allowed(patterns: tuple[str, ...], subject: str) -> bool:
    """NATS wildcard matching: `*` one token, `>` the rest."""
    want = subject.split(".")
    for p in patterns:
        toks = p.split(".")
        ok = True
        for i, t in enumerate(toks):
            if t == ">":
                ok = len(want) > i
                break
            if i >= len(want) or (t != "*" and t != want[i]):
                ok = False
                break
        else:
            ok = len(toks) == len(want)
        if ok:
            return True
    return False


def test_each_service_publishes_its_own_output_only() -> None:
    run, raw, clean = subjects.run_request("p"), subjects.raw("p", "r"), subjects.clean("p", "r")
    pub = {role: permissions(role).publish for role in ROLES}
    assert _allowed(pub["scheduler"], run) and not _allowed(pub["loader"], run)
    assert not _allowed(pub["extractor"], run) and not _allowed(pub["transformer"], run)
    assert _allowed(pub["extractor"], raw) and not _allowed(pub["transformer"], raw)
    assert _allowed(pub["transformer"], clean) and not _allowed(pub["extractor"], clean)
    assert all(_allowed(pub[r], subjects.events("p", "r")) for r in ROLES)


def test_no_service_administers_jetstream_or_acks_another_stage() -> None:
    admin = [
        "$JS.API.STREAM.CREATE.JETL_RAW",
        "$JS.API.STREAM.DELETE.JETL_RAW",
        "$JS.API.STREAM.PURGE.JETL_CLEAN",
        "$JS.API.STREAM.MSG.DELETE.JETL_EVENTS",
        "$JS.API.CONSUMER.DURABLE.CREATE.JETL_CLEAN.loader",
        "$JS.API.CONSUMER.CREATE.JETL_CLEAN.loader.jetl.clean.>",
        "$JS.API.CONSUMER.DELETE.JETL_CLEAN.loader",
    ]
    for role in ("extractor", "transformer", "loader", "scheduler"):
        pub = permissions(role).publish
        assert not any(_allowed(pub, s) for s in admin), role
    assert not _allowed(permissions("extractor").publish, "$JS.ACK.JETL_CLEAN.loader.1.2.3.4.5.6.7")
    assert _allowed(permissions("loader").publish, "$JS.ACK.JETL_CLEAN.loader.1.2.3.4.5.6.7")
    assert _allowed(permissions("operator").publish, "$JS.API.STREAM.CREATE.JETL_RAW")


def test_only_the_loader_answers_loader_control_verbs() -> None:
    verb = subjects.control("loader", "diff")
    assert _allowed(permissions("loader").subscribe, verb)
    assert not _allowed(permissions("extractor").subscribe, verb)


def test_credentials_are_generated_once_and_kept_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "nats" / "users.json"
    first = Credentials.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Credentials.load_or_create(path)
    assert first.password("loader").get_secret_value() == again.password("loader").get_secret_value()
    assert first.password("loader").get_secret_value() != first.password("extractor").get_secret_value()
    conf = first.server_config()
    assert conf.startswith("authorization {") and '"user": "operator"' in conf
    assert first.password("loader").get_secret_value() not in repr(first)
