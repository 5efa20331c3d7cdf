"""Each role's effective rights, derived from a real nats-server running the generated permissions (not from the
allow lists themselves), held to the table in docs/security.md.

Every capability is probed with the role's own password: a publish or a subscription, and whether the server
answered it with a permissions violation. The server has no jetl deployment and no services: a probe that is
allowed goes nowhere.

After a deliberate change of the rights, print the table the server gives with
`uv run python tests/security/test_role_rights.py` and put it in docs/security.md.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nats
import pytest

from jetl import subjects
from jetl.access import ROLES, Credentials, Role
from jetl.stack.embedded import NatsServer
from jetl.subjects import STATE_BUCKET, Kind, StateKey, stream_name

pytestmark = [pytest.mark.integration]

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
BEGIN, END = "<!-- rights: derived from the server by tests/security/test_role_rights.py -->", "<!-- end of rights -->"
_JS = "$JS.API"
SENTINEL = "no.role.may.publish.this"
_LOADER, _TRANSFORMER = subjects.stage_durable("loader", "p"), subjects.stage_durable("transformer", "p")


def _kv(key: str) -> str:
    return f"$KV.{STATE_BUCKET}.{key}"


def _other(role: Role) -> Role:
    return "loader" if role != "loader" else "extractor"


@dataclass(frozen=True)
class Capability:
    """One thing a role may or may not do: publish to, or subscribe to, a subject (which may depend on the role)."""

    what: str
    action: Literal["pub", "sub"]
    subject: Callable[[Role], str]


CAPABILITIES = [
    Capability("request a run", "pub", lambda r: subjects.run_request("p")),
    Capability("queue a partition of a run", "pub", lambda r: subjects.run_partition("p", "r", "x")),
    Capability("publish raw batches", "pub", lambda r: subjects.raw("p", "r")),
    Capability("publish clean batches", "pub", lambda r: subjects.clean("p", "r")),
    *(
        Capability(f"dead-letter at stage {s}", "pub", lambda r, s=s: subjects.dlq("p", s))  # type: ignore[misc]
        for s in ("extract", "transform", "load")
    ),
    *(
        Capability(f"say events as {o}", "pub", lambda r, o=o: subjects.events("p", "r", o))  # type: ignore[misc]
        for o in ROLES
    ),
    Capability("ship log lines", "pub", lambda r: subjects.logs("p", "r")),
    Capability("write a cursor", "pub", lambda r: _kv(f"{StateKey.CURSOR}.p")),
    Capability("write run state", "pub", lambda r: _kv(f"{StateKey.RUN}.p.r")),
    Capability("write a batch ledger", "pub", lambda r: _kv(f"{StateKey.BATCH}.p.r.000000")),
    Capability("write the unfinished-run index", "pub", lambda r: _kv(f"{StateKey.ACTIVE}.p")),
    Capability("write a schedule mark", "pub", lambda r: _kv(f"{StateKey.SCHED}.p")),
    Capability("pause a pipeline", "pub", lambda r: _kv(f"{StateKey.PAUSE}.p")),
    Capability("write its own heartbeat", "pub", lambda r: _kv(f"{StateKey.SVC}.{r}.host_1")),
    Capability("write another role's heartbeat", "pub", lambda r: _kv(f"{StateKey.SVC}.{_other(r)}.host_1")),
    Capability("read the state bucket", "pub", lambda r: f"{_JS}.DIRECT.GET.KV_{STATE_BUCKET}.$KV.{STATE_BUCKET}.x"),
    *(
        Capability(f"read {stream_name(k)} messages", "pub", lambda r, k=k: f"{_JS}.STREAM.MSG.GET.{stream_name(k)}")  # type: ignore[misc]
        for k in (Kind.RUN, Kind.RAW, Kind.CLEAN, Kind.EVENTS, Kind.DLQ, Kind.LOGS)
    ),
    Capability("read stream info", "pub", lambda r: f"{_JS}.STREAM.INFO.{stream_name(Kind.RAW)}"),
    Capability("create a consumer", "pub", lambda r: f"{_JS}.CONSUMER.CREATE.{stream_name(Kind.CLEAN)}"),
    Capability("create a named consumer", "pub", lambda r: f"{_JS}.CONSUMER.CREATE.{stream_name(Kind.DLQ)}.x.jetl.>"),
    Capability("create a durable", "pub", lambda r: f"{_JS}.CONSUMER.DURABLE.CREATE.{stream_name(Kind.CLEAN)}.x"),
    Capability("pull from the loader's durable", "pub", lambda r: f"{_JS}.CONSUMER.MSG.NEXT.JETL_CLEAN.{_LOADER}"),
    Capability("ack the loader's messages", "pub", lambda r: f"$JS.ACK.JETL_CLEAN.{_LOADER}.1.2.3.4.5.6.7"),
    Capability(
        "pull from the transformer's durable", "pub", lambda r: f"{_JS}.CONSUMER.MSG.NEXT.JETL_RAW.{_TRANSFORMER}"
    ),
    Capability("pull from the extractor's durable", "pub", lambda r: f"{_JS}.CONSUMER.MSG.NEXT.JETL_RUNS.extractor"),
    Capability("create or delete a stream", "pub", lambda r: f"{_JS}.STREAM.DELETE.{stream_name(Kind.RAW)}"),
    Capability("publish to a reply inbox", "pub", lambda r: f"{subjects.inbox_prefix(_other(r))}.x.y"),
    Capability("hear its own replies", "sub", lambda r: subjects.inbox(r)),
    Capability("hear another role's replies", "sub", lambda r: subjects.inbox(_other(r))),
    Capability("hear every reply inbox", "sub", lambda r: f"{subjects.INBOX_ROOT}.>"),
    Capability("answer its own control verbs", "sub", lambda r: subjects.control_pattern(r)),
    Capability("answer the loader's control verbs", "sub", lambda r: subjects.control("loader", "diff")),
    Capability("hear events as they are published", "sub", lambda r: subjects.pattern(Kind.EVENTS)),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Credentials]]:
    creds = Credentials.generate()
    with NatsServer(tmp_path_factory.mktemp("rights"), authorization=creds.server_config()) as running:
        yield running, creds


async def _rights(url: str, creds: Credentials, role: Role) -> dict[str, bool]:
    """What the server let `role` do, capability by capability."""
    errors: list[str] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        url, user=role, password=creds.password(role).get_secret_value(), error_cb=error_cb, allow_reconnect=False
    )
    try:
        for c in CAPABILITIES:
            subject = c.subject(role)
            if c.action == "pub":
                await nc.publish(subject, b"{}")
            else:
                await nc.subscribe(subject)
        # The server answers in order: once a last, refused publish is reported, every violation before it is too.
        await nc.publish(SENTINEL, b"")
        await nc.flush()
        for _ in range(500):
            if role == "operator" or any(f'"{SENTINEL}"' in e for e in errors):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"the server never refused {SENTINEL} to {role}: {errors}")
    finally:
        await nc.close()

    def refused(c: Capability) -> bool:
        word = "publish to" if c.action == "pub" else "subscription to"
        return any("permissions violation" in e and f'{word} "{c.subject(role).lower()}"' in e for e in errors)

    return {c.what: not refused(c) for c in CAPABILITIES}


def derived(url: str, creds: Credentials) -> dict[Role, dict[str, bool]]:
    async def every() -> dict[Role, dict[str, bool]]:
        return {role: await _rights(url, creds, role) for role in ROLES}

    return asyncio.run(every())


def table(rights: dict[Role, dict[str, bool]]) -> str:
    rows = ["| may it ... | " + " | ".join(f"`{r}`" for r in ROLES) + " |", "|---" * (len(ROLES) + 1) + "|"]
    for c in CAPABILITIES:
        rows.append(f"| {c.what} | " + " | ".join("yes" if rights[r][c.what] else "no" for r in ROLES) + " |")
    return "\n".join(rows)


def documented() -> str:
    found = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), DOC.read_text(), flags=re.S)
    assert found, f"{DOC} lost its table of rights"
    return found.group(1)


def test_each_roles_rights_on_the_server_are_the_documented_ones(server: tuple[NatsServer, Credentials]) -> None:
    running, creds = server
    rights = derived(running.url, creds)
    assert all(rights["operator"].values())  # the probes can be allowed: the operator may do everything
    assert table(rights) == documented()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        c = Credentials.generate()
        with NatsServer(Path(tmp), authorization=c.server_config()) as srv:
            sys.stdout.write(table(derived(srv.url, c)) + "\n")
