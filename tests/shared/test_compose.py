"""compose.yaml and the Dockerfile, checked by reading them (there is no Docker engine in the test environment).

Every jetl service has its command, its environment (only settings that exist), its dependencies and a replica
count; every service has an image; every file the Dockerfile copies exists.
"""

from __future__ import annotations

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
    assert "--jetstream" in services["nats"]["command"]


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


def test_dockerfile_copies_only_what_exists_and_installs_one_service() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(?!--from)(\S+(?: \S+)*?) \S+$", text, flags=re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    assert "--package jetl-$SERVICE" in text
    assert 'ENTRYPOINT ["jetl"]' in text
    for svc in SERVICES:
        assert (ROOT / "services" / svc / "pyproject.toml").exists()
