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
    for r in ROLES:  # each role says events on its own subjects only
        assert _allowed(pub[r], subjects.events("p", "r", r))
        assert r == "operator" or not any(_allowed(pub[r], subjects.events("p", "r", o)) for o in ROLES if o != r)


def test_services_hear_only_their_own_inboxes_and_answer_only_requests() -> None:
    for r in ROLES:
        if r == "operator":
            continue
        sub, pub = permissions(r).subscribe, permissions(r).publish
        assert _allowed(sub, f"{subjects.inbox_prefix(r)}.abc.1") and not _allowed(sub, "_INBOX.abc.1")
        assert not any(_allowed(sub, f"{subjects.inbox_prefix(o)}.abc") for o in ROLES if o != r)
        assert not _allowed(pub, "_INBOX.abc") and permissions(r).allow_responses


def test_state_writes_are_granted_by_key_prefix() -> None:
    def writes(role: str, key: str) -> bool:
        return _allowed(permissions(role).publish, f"$KV.{subjects.STATE_BUCKET}.{key}")  # type: ignore[arg-type]

    for key in ("cursor.p", "run.p.r", "batch.p.r.000001", "ok.p", "sched.p"):
        assert writes("scheduler", key) and not any(writes(r, key) for r in ("extractor", "transformer", "loader"))
    for r in ("extractor", "transformer", "loader", "scheduler"):
        assert writes(r, f"svc.{r}.host_1") and not writes(r, "svc.other.host_1")
        assert not writes(r, "pause.p")


def test_services_create_no_consumer_and_read_only_their_streams() -> None:
    for r in ("extractor", "transformer", "loader", "scheduler"):
        pub = permissions(r).publish
        assert not _allowed(pub, "$JS.API.CONSUMER.CREATE.JETL_CLEAN")
        assert not _allowed(pub, "$JS.API.CONSUMER.CREATE.JETL_CLEAN.x.jetl.clean.>")
    assert not _allowed(permissions("loader").publish, "$JS.API.STREAM.MSG.GET.JETL_RAW")
    assert _allowed(permissions("extractor").publish, "$JS.API.STREAM.MSG.GET.JETL_RAW")


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
