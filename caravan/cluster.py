"""A whole Caravan on one machine as plain processes: redis-server (embedded when no URL is given),
registry, worker(s) and gateway, each its own process. ``caravan serve`` and the integration tests use it.

Children get SIGTERM when the supervisor exits (Linux ``PR_SET_PDEATHSIG``), so no orphans are left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from caravan.errors import CaravanError

REDIS_HINT = (
    "redis-server was not found. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, "
    "macOS: `brew install redis`) or point CARAVAN_REDIS_URL at a running Redis."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ClusterConfig:
    models: Path
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 11434
    registry_port: int = 0
    redis_url: str | None = None
    workers: int = 1
    worker_env: dict[str, str] = field(default_factory=dict)
    gateway_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    python: str = sys.executable


class LocalCluster:
    """Start and stop the processes of one cluster."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis_url = config.redis_url or ""
        self.registry_port = config.registry_port or free_port()
        self.log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="caravan-logs-"))
        self.internal_token = os.environ.get("CARAVAN_INTERNAL_TOKEN") or secrets.token_urlsafe(24)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.config.gateway_host}:{self.config.gateway_port}"

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)
        self.procs[name] = proc
        return proc

    def start_redis(self, port: int | None = None) -> None:
        """The embedded Redis: a private ``redis-server`` child (only when no Redis URL was configured)."""
        if self.redis_url and port is None:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise CaravanError(REDIS_HINT)
        port = port or free_port()
        data = Path(tempfile.mkdtemp(prefix="caravan-redis-"))
        self.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(data)], {})
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self._wait_tcp(port, "redis")

    def restart_redis(self) -> None:
        """Stop the embedded Redis and start a fresh one on the same port (its data is gone)."""
        proc = self.procs["redis"]
        proc.terminate()
        proc.wait(10)
        self.start_redis(port=int(self.redis_url.rsplit(":", 1)[1].split("/")[0]))

    def common_env(self) -> dict[str, str]:
        return {"CARAVAN_REDIS_URL": self.redis_url, "CARAVAN_REGISTRY_URL": self.registry_url,
                "CARAVAN_MODELS": str(self.config.models), "PYTHONUNBUFFERED": "1",
                "CARAVAN_INTERNAL_TOKEN": self.internal_token}

    def start_registry(self) -> None:
        env = {**self.common_env(), "CARAVAN_REGISTRY_HOST": f"127.0.0.1:{self.registry_port}"}
        self.spawn("registry", [self.config.python, "-m", "registry"], env)
        self._wait_http(f"{self.registry_url}/healthz", "registry")

    def start_worker(self, index: int, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**self.common_env(), "CARAVAN_WORKER_ID": f"worker-{index}", **self.config.worker_env,
               **(extra or {})}
        return self.spawn(f"worker-{index}", [self.config.python, "-m", "worker"], env)

    def start_gateway(self) -> None:
        env = {**self.common_env(), "OLLAMA_HOST": f"{self.config.gateway_host}:{self.config.gateway_port}",
               **self.config.gateway_env}
        self.spawn("gateway", [self.config.python, "-m", "gateway"], env)
        self._wait_http(f"{self.gateway_url}/api/version", "gateway")

    def start(self) -> None:
        """Everything, in dependency order; raises with the failing log's tail when a part won't start."""
        try:
            self.start_redis()
            self.start_registry()
            for index in range(self.config.workers):
                self.start_worker(index)
            self.start_gateway()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM in reverse start order, SIGKILL what is still alive after ``timeout``."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise CaravanError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _wait_http(self, url: str, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise CaravanError(f"{name} did not answer {url} within {timeout}s:\n{self.log_tail(name)}")

    def _wait_tcp(self, port: int, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(name)
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.02)
        raise CaravanError(f"{name} did not listen on {port}:\n{self.log_tail(name)}")
