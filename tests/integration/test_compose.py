"""The compose topology without a Docker engine: every default-profile service of docker-compose.yml started as a
plain process from the file's own command, environment (``.env.example`` as its env file) and healthcheck, in
``depends_on`` order, then the official ollama client's smoke test against its gateway.

Rewrites are the ones a container network does for free: service hostnames (``redis``, ``registry``) and bind
addresses become 127.0.0.1, every listening port a free one, volume paths temp directories; ``python`` is this
interpreter and ``caravan`` its script. Processes are spawned the way ``caravan.cluster`` does (log per service,
SIGTERM on exit).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from caravan.cluster import ClusterConfig, LocalCluster, free_port
from tests.compose_support import ENV_EXAMPLE, load_compose, read_env_file, service_env

LISTEN = {"redis": 6379, "registry": 11435, "gateway": 11434, "worker": 9400}  # checked by tests/unit/test_compose
HOST_PORT = re.compile(r"\b(0\.0\.0\.0|127\.0\.0\.1|localhost|redis|registry|gateway):(\d+)\b")
MODEL = "smollm2:135m"


class ComposeAsProcesses:
    """Starts the default profile of the compose file as local processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env_file = read_env_file(ENV_EXAMPLE)
        self.compose = load_compose(self.env_file)
        self.ports = {(name, port): free_port() for name, port in LISTEN.items()}
        self.runner = LocalCluster(ClusterConfig(models=root / "models", log_dir=root))

    # -- rewriting -------------------------------------------------------------------------------------
    def port(self, service: str, port: int) -> int:
        return self.ports.get((service, port), port)

    def rewrite(self, service: str, text: str) -> str:
        def local(match: re.Match[str]) -> str:
            host = match.group(1)
            owner = service if host in ("0.0.0.0", "127.0.0.1", "localhost") else host
            return f"127.0.0.1:{self.port(owner, int(match.group(2)))}"

        text = HOST_PORT.sub(local, text)
        for volume in self.compose["services"][service].get("volumes") or []:
            name, path = volume.split(":")[:2]
            if text == path or text.startswith(path + "/"):
                text = str(self.root / name) + text[len(path):]
        return "127.0.0.1" if text == "0.0.0.0" else text

    def environment(self, name: str) -> dict[str, str]:
        service = self.compose["services"][name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARAVAN_", "OLLAMA_"))}
        merged = {**(self.env_file if service.get("env_file") else {}), **service_env(service)}
        for key, value in merged.items():
            if key.endswith("_PORT") and value.isdigit():
                value = str(self.port(name, int(value)))
            env[key] = self.rewrite(name, value)
        return {**env, "PYTHONUNBUFFERED": "1"}

    def argv(self, name: str, command: list[str]) -> list[str]:
        tools = {"python": sys.executable, "caravan": str(Path(sys.executable).parent / "caravan"),
                 "redis-server": shutil.which("redis-server") or "redis-server",
                 "redis-cli": shutil.which("redis-cli") or "redis-cli"}
        argv = [tools.get(command[0], command[0]), *(self.rewrite(name, part) for part in command[1:])]
        if command[0] == "redis-server":  # the container's port, bind address and /data volume
            argv += ["--port", str(self.port(name, 6379)), "--bind", "127.0.0.1", "--dir", str(self.data(name))]
        return argv

    def data(self, name: str) -> Path:
        volume = next(v for v in self.compose["services"][name]["volumes"] if v.split(":")[1] == "/data")
        path = self.root / volume.split(":")[0]
        path.mkdir(exist_ok=True)
        return path

    # -- running ---------------------------------------------------------------------------------------
    def order(self) -> list[str]:
        """Default-profile services, dependencies first."""
        services = {n: s for n, s in self.compose["services"].items() if not s.get("profiles")}
        done: list[str] = []
        while len(done) < len(services):
            ready = [n for n, s in services.items() if n not in done and set(s.get("depends_on") or {}) <= set(done)]
            assert ready, "depends_on has a cycle"
            done += sorted(ready)
        return done

    def start(self) -> None:
        (self.root / "models").mkdir(exist_ok=True)
        for name in self.order():
            service = self.compose["services"][name]
            proc = self.runner.spawn(name, self.argv(name, service["command"]), self.environment(name))
            if service.get("restart") == "no":
                assert proc.wait(120) == 0, self.runner.log_tail(name)
            else:
                self.wait_healthy(name, service["healthcheck"])

    def health_argv(self, name: str, check: dict[str, Any]) -> list[str]:
        test = list(check["test"])
        if test[0] == "CMD-SHELL":
            shell = test[1].replace("redis-cli", f"redis-cli -p {self.port(name, 6379)}")
            return ["sh", "-c", shell]
        return self.argv(name, test[1:])

    def wait_healthy(self, name: str, check: dict[str, Any], timeout: float = 90.0) -> None:
        """Run the service's own healthcheck until it passes (bounded), as compose's service_healthy does."""
        argv, env = self.health_argv(name, check), self.environment(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.runner.procs[name].poll() is None, f"{name} exited:\n{self.runner.log_tail(name)}"
            if subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} never became healthy:\n{self.runner.log_tail(name)}")

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.port('gateway', 11434)}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeAsProcesses]:
    running = ComposeAsProcesses(tmp_path_factory.mktemp("compose"))
    try:
        running.start()
        yield running
    finally:
        running.runner.stop()


def test_compose_services_start_in_order_and_pass_their_healthchecks(stack: ComposeAsProcesses) -> None:
    assert stack.order() == ["models-init", "redis", "registry", "gateway", "worker"]
    assert stack.runner.procs["models-init"].returncode == 0
    assert all(stack.runner.procs[n].poll() is None for n in ("redis", "registry", "gateway", "worker"))


def test_ollama_client_smoke_against_the_compose_gateway(stack: ComposeAsProcesses) -> None:
    client = ollama.Client(host=stack.gateway_url)
    assert MODEL in [m.model for m in client.list().models]
    result = client.generate(model=MODEL, prompt="Say hi.", options={"temperature": 0, "num_predict": 8})
    assert result.done and (result.response or "").strip() and result.eval_count


def test_redis_runs_with_the_password_and_append_only_file(stack: ComposeAsProcesses) -> None:
    import redis

    port, password = stack.port("redis", 6379), stack.env_file["REDIS_PASSWORD"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    with redis.Redis(port=port, password=password) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert any((stack.data("redis") / entry).exists() for entry in ("appendonlydir", "appendonly.aof"))


def test_registry_needs_the_internal_token_the_services_share(stack: ComposeAsProcesses) -> None:
    import httpx

    registry = f"http://127.0.0.1:{stack.port('registry', 11435)}"
    assert stack.env_file["CARAVAN_INTERNAL_TOKEN"], ".env.example ships the token on"
    assert httpx.get(f"{registry}/internal/blobs/sha256:{'0' * 64}").status_code == 401
    assert httpx.get(f"{registry}/healthz").status_code == 200
    assert MODEL in [m.model for m in ollama.Client(host=stack.gateway_url).list().models]  # the gateway has it
