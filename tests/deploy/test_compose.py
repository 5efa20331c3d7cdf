"""compose.yaml and the Dockerfile, checked by reading them (there is no Docker engine in the test environment).

Every jetl service has its command, its environment (only settings that exist), its dependencies and a replica
count; every service has an image; every file the Dockerfile copies exists. And it is secure by default: NATS
requires TLS and a password, each service connects as its own user whose permissions in compose/nats.conf are the
ones `jetl.access` generates, every password is a required variable with no default, and every published port is
bound to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("extractor", "transformer", "loader", "scheduler")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def settings_class(service: str) -> type[BaseSettings]:
    module = {ep.name: ep for ep in entry_points(group="jetl.services")}[service].module
    package = module.split(".")[0]
    found = __import__(f"{package}.settings", fromlist=["x"])
    classes = [
        v
        for v in vars(found).values()
        if isinstance(v, type) and issubclass(v, BaseSettings) and v.__module__ == found.__name__
    ]
    assert len(classes) == 1, f"{package}.settings should define one settings class"
    return classes[0]


def unknown_settings(env: dict[str, Any], cls: type[BaseModel]) -> list[str]:
    """JETL_* variables that name no field of `cls` (nested with `__`)."""
    bad = []
    for key in env:
        if not key.startswith("JETL_"):
            continue
        model: type[BaseModel] | None = cls
        for part in key.removeprefix("JETL_").lower().split("__"):
            field = model.model_fields.get(part) if model else None
            if field is None:
                bad.append(key)
                break
            ann = field.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return bad


def test_infrastructure_is_there_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, image in (("nats", "nats:"), ("clickhouse", "clickhouse/clickhouse-server:"), ("postgres", "postgres:")):
        assert services[name]["image"].startswith(image)
        assert "healthcheck" in services[name]
    assert services["nats"]["command"] == ["-c", "/etc/nats/nats.conf"]
    assert "./compose/nats.conf:/etc/nats/nats.conf:ro" in services["nats"]["volumes"]
    assert re.search(r"^jetstream \{", nats_conf(), flags=re.M)


def nats_conf() -> str:
    return (ROOT / "compose" / "nats.conf").read_text()


def test_nats_requires_tls_and_a_password_with_generated_permissions(compose: dict[str, Any]) -> None:
    from jetl.access import ROLES, permissions

    conf = nats_conf()
    tls = re.search(r"^tls \{(.*?)^\}", conf, flags=re.M | re.S)
    assert tls and "cert_file" in tls.group(1) and "key_file" in tls.group(1)
    assert "no_auth_user" not in conf  # no anonymous access
    users_text = conf[conf.index("users = ") + len("users = ") : conf.rindex("}")]
    users = json.loads(re.sub(r"(?<![\"\w])\$(\w+)", r'"$\1"', users_text))
    assert [u["user"] for u in users] == list(ROLES)
    for u in users:
        variable = f"JETL_NATS_{u['user'].upper()}_PASSWORD"
        assert u["password"] == f"${variable}"  # substituted by nats-server from its environment
        assert u["permissions"] == permissions(u["user"]).as_config(), u["user"]
        assert compose["services"]["nats"]["environment"][variable].startswith(f"${{{variable}:?")


def passwords(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, value) in compose.yaml whose key names a password."""
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in passwords(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in passwords(v, f"{path}[{i}]")]
    return [(path, str(node))] if "PASSWORD" in path.rsplit(".", 1)[-1].upper() else []


def test_every_password_is_required_and_has_no_default(compose: dict[str, Any]) -> None:
    found = passwords(compose)
    assert len(found) >= 12  # NATS' five users, each service, deploy, ClickHouse, PostgreSQL
    for path, value in found:
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), f"{path} = {value!r}: use ${{VAR:?message}}"


def test_published_ports_are_few_and_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}
    assert set(published) == {"nats", "clickhouse"}  # the CLI and queries; PostgreSQL and metrics stay inside
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT" not in compose["services"]["clickhouse"]["environment"]


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert svc.get("image") or svc.get("build"), f"{name} has neither image nor build"
        if "image" in svc:
            assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", svc["image"]), f"{name}: image without a tag"


@pytest.mark.parametrize("name", SERVICES)
def test_each_jetl_service_has_command_env_dependencies_and_replicas(compose: dict[str, Any], name: str) -> None:
    svc = compose["services"][name]
    assert svc["command"] == ["serve", name]
    assert svc["build"]["args"]["SERVICE"] == name
    env = svc["environment"]
    assert env["JETL_NATS__URL"] == "nats://nats:4222"
    assert env["JETL_NATS__USER"] == name  # its own user: the permissions of its stage
    assert env["JETL_NATS__PASSWORD"].startswith(f"${{JETL_NATS_{name.upper()}_PASSWORD:?")
    assert env["JETL_NATS__TLS__CA_FILE"] and "./compose/tls/ca.pem:/etc/jetl/tls/ca.pem:ro" in svc["volumes"]
    assert unknown_settings(env, settings_class(name)) == []
    deps = svc["depends_on"]
    assert deps["nats"]["condition"] == "service_healthy"
    assert deps["deploy"]["condition"] == "service_completed_successfully"
    assert str(svc["deploy"]["replicas"]).startswith("${JETL_")  # each stage scales on its own
    assert "./pipelines:/app/pipelines:ro" in svc["volumes"]  # new pipelines are picked up without a restart
    assert env["JETL_METRICS_PORT"] != "0"


def test_deploy_runs_once_before_the_services(compose: dict[str, Any]) -> None:
    deploy = compose["services"]["deploy"]
    assert deploy["command"][0] == "deploy" and deploy["restart"] == "no"
    assert set(deploy["depends_on"]) == {"nats", "clickhouse"}
    from jetl.settings import JetlSettings

    assert unknown_settings(deploy["environment"], JetlSettings) == []
    assert deploy["environment"]["JETL_NATS__USER"] == "operator"  # only the operator may declare streams


def test_dockerfile_copies_only_what_exists_and_installs_one_service() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(?!--from)(\S+(?: \S+)*?) \S+$", text, flags=re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    assert "--package jetl-$SERVICE" in text
    assert 'ENTRYPOINT ["jetl"]' in text
    for svc in SERVICES:
        assert (ROOT / "services" / svc / "pyproject.toml").exists()


def test_only_the_loader_and_deploy_hold_the_destination_credentials_and_only_over_tls(compose: dict[str, Any]) -> None:
    holders = {
        name
        for name, svc in compose["services"].items()
        if any(k.startswith("JETL_CLICKHOUSE__") for k in (svc.get("environment") or {}))
    }
    assert holders == {"loader", "deploy"}  # a leaked extractor, transformer or scheduler has no ClickHouse password
    for name in holders:
        env = compose["services"][name]["environment"]
        assert env["JETL_CLICKHOUSE__DSN"].startswith("https://"), f"{name} reaches ClickHouse in the clear"
        assert env["JETL_CLICKHOUSE__CA_FILE"] == "/etc/jetl/tls/ca.pem"
        assert "./compose/tls/ca.pem:/etc/jetl/tls/ca.pem:ro" in compose["services"][name]["volumes"]
    clickhouse = compose["services"]["clickhouse"]
    assert clickhouse["ports"] == ["127.0.0.1:8443:8443"]  # HTTPS only, from this host only
    assert "./compose/clickhouse-tls.xml:/etc/clickhouse-server/config.d/tls.xml:ro" in clickhouse["volumes"]
    tls = (ROOT / "compose" / "clickhouse-tls.xml").read_text()
    assert '<http_port remove="1"/>' in tls and "<https_port>8443</https_port>" in tls


def test_metrics_listen_on_loopback_unless_a_deployment_says_otherwise(compose: dict[str, Any]) -> None:
    from jetl.settings import JetlSettings

    assert JetlSettings().metrics_host == "127.0.0.1"
    for name in SERVICES:  # in a container, the compose network (no port of theirs is published)
        env = compose["services"][name]["environment"]
        assert env["JETL_METRICS_HOST"] == "0.0.0.0" and not compose["services"][name].get("ports")
