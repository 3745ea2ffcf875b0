"""docker-compose.yml cannot run here; check that what it names exists in the package."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tests.conftest import run_ezq

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_health_checks() -> None:
    """postgres, redis, migrate and worker exist; the worker waits for healthy deps."""
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "worker"} <= set(services)
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    depends = services["worker"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert (ROOT / "Dockerfile").is_file()


def test_every_ezq_command_in_compose_exists() -> None:
    """Each `ezq ...` command the compose file runs is a real CLI command."""
    checked = 0
    for name, service in compose()["services"].items():
        command = service.get("command")
        if not command:
            continue
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if argv[0] != "ezq":
            continue
        words = [a for a in argv[1:] if not a.startswith("-")][:2]
        for depth in range(len(words), 0, -1):
            out = run_ezq(*words[:depth], "--help")
            if out.returncode == 0:
                break
        assert out.returncode == 0, f"{name}: {argv} is not an ezq command: {out.stderr}"
        checked += 1
    assert checked >= 2


def test_image_is_built_once_and_run_by_every_ezq_service() -> None:
    """One service builds the image; every service that runs ezq uses that image."""
    services = compose()["services"]
    builders = [name for name, s in services.items() if "build" in s]
    assert builders == ["migrate"]
    image = services["migrate"]["image"]
    for name, service in services.items():
        if str(service.get("command", "")).startswith("ezq"):
            assert service.get("image") == image, name


def test_fake_gateway_only_in_its_profile() -> None:
    """The fake gateway runs only with --profile fake; the worker starts without it."""
    services = compose()["services"]
    assert services["fake-gateway"]["profiles"] == ["fake"]
    assert services["worker"]["depends_on"]["fake-gateway"]["required"] is False
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    assert "--profile fake" in header


def test_worker_has_a_health_check_and_metrics() -> None:
    """The worker answers a broker ping as its health check and serves metrics on 9808."""
    worker = compose()["services"]["worker"]
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
    assert "--metrics-port 9808" in worker["command"]
    assert "9808:9808" in worker["ports"]


def test_image_has_the_charts_extra() -> None:
    """The Dockerfile installs the charts extra, so `ezq usage --chart` works in the image."""
    assert "pip install '.[charts]'" in (ROOT / "Dockerfile").read_text()
