"""Registry services as real processes (``python -m registry``), and stores seeded from the demo store."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from caravan.cluster import _die_with_parent, free_port
from caravan.names import ModelName
from registry.store import Store

FAST = {"CARAVAN_JOB_POLL_DELAY": "0.05", "CARAVAN_TRANSFER_BACKOFF": "0.01", "CARAVAN_LOG_JSON": "false",
        "CARAVAN_REGISTRY_KEY": "/nonexistent/id_ed25519", "PYTHONUNBUFFERED": "1"}


def seed_store(source: Path, dest: Path, names: list[tuple[str, str]]) -> Store:
    """A store at ``dest`` holding ``source``'s models under new names (old, new); blobs hard-linked."""
    src, store = Store(source), Store(dest)
    for old, new in names:
        stored = src.read_manifest(ModelName.parse(old))
        for digest in stored.manifest.all_digests():
            if not store.has_blob(digest):
                os.link(src.blob_path(digest), store.blob_path(digest))
        store.write_manifest(ModelName.parse(new), stored.raw)
    return store


@dataclass
class RegistryProcess:
    """One registry service on a free port, with its own Redis database."""

    store: Path
    redis_url: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RegistryProcess:
        env = {**os.environ, **FAST, "CARAVAN_REDIS_URL": self.redis_url, "CARAVAN_MODELS": str(self.store),
               "CARAVAN_REGISTRY_HOST": self.host, **self.env}
        log = (self.log_dir / f"registry-{self.port}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "registry"], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"registry did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.log_dir / f"registry-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def transfer(self, kind: str, model: str, **body: Any) -> list[dict[str, Any]]:
        """POST /api/pull or /api/push, streaming; every NDJSON object."""
        with httpx.stream("POST", f"{self.url}/api/{kind}", json={"model": model, **body}, timeout=300) as reply:
            assert reply.status_code == 200, reply.read()
            return [json.loads(line) for line in reply.iter_lines() if line.strip()]

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def blob_names(root: Path) -> list[str]:
    """Every file name in ``root/blobs`` (partials and temp files included)."""
    return sorted(path.name for path in (root / "blobs").iterdir()) if (root / "blobs").is_dir() else []


def manifest_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "manifests").rglob("*") if path.is_file())


def same_blobs(a: Path, b: Path, digests: set[str]) -> bool:
    """The blobs ``digests`` exist in both stores with identical bytes."""
    return all(filecmp.cmp(Store(a).blob_path(d), Store(b).blob_path(d), shallow=False) for d in digests)
