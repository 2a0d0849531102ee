"""The real stack, where a Docker engine exists: build the images, ``docker compose up --wait``, the ollama client's
smoke test against the published gateway, every container healthy, then ``down -v``.

Without a Docker engine this is skipped, with the reason in the report: it never counts as a pass. It is the
suite's one allowed skip; tests/integration/test_compose.py runs the same topology as plain processes everywhere.
Building llama-cpp-python takes ~10 minutes on 2 cores the first time (BuildKit caches it afterwards).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import docker
import ollama
import pytest
from docker.errors import DockerException

from caravan.cluster import free_port
from tests.compose_support import ENV_EXAMPLE, ROOT

MODEL = "smollm2:135m"


def docker_engine() -> docker.DockerClient:
    """A client of a reachable engine, or a skip saying why there is none."""
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    return client


def compose(project: str, env: dict[str, str], *args: str, timeout: float = 3600) -> None:
    argv = ["docker", "compose", "-p", project, "-f", str(ROOT / "docker-compose.yml"), *args]
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[docker.DockerClient, str, str]]:
    client = docker_engine()
    project = f"caravan-test-{secrets.token_hex(3)}"
    port = free_port()
    env = {**os.environ, "CARAVAN_PORT": str(port), "CARAVAN_REGISTRY_PORT": str(free_port()),
           "CARAVAN_REDIS_PORT": str(free_port()), "REDIS_PASSWORD": secrets.token_hex(16)}
    env_file = ROOT / ".env"
    created = not env_file.exists()  # compose's env_file needs it; a user's own .env is used as it is
    if created:
        env_file.write_text(ENV_EXAMPLE.read_text())
    try:
        compose(project, env, "up", "-d", "--build", "--wait", "--wait-timeout", "600")
        yield client, project, f"http://127.0.0.1:{port}"
    finally:
        compose(project, env, "down", "-v", "--remove-orphans", timeout=300)
        if created:
            env_file.unlink()


@pytest.mark.timeout(4000)
def test_docker_compose_stack_serves_the_ollama_client(stack: tuple[docker.DockerClient, str, str]) -> None:
    client, project, gateway = stack
    containers = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    services = {c.labels["com.docker.compose.service"]: c for c in containers}
    assert {"redis", "registry", "gateway", "worker"} <= set(services)
    for name in ("redis", "registry", "gateway", "worker"):
        assert services[name].attrs["State"]["Health"]["Status"] == "healthy", name
    assert services["worker"].attrs["Config"]["User"] == "10001:10001"
    ollama_client = ollama.Client(host=gateway)
    assert MODEL in [m.model for m in ollama_client.list().models]
    result = ollama_client.generate(model=MODEL, prompt="Say hi.", options={"temperature": 0, "num_predict": 8})
    assert result.done and (result.response or "").strip()
