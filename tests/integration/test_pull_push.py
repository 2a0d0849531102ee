"""Pull, push, LAN mirror and Caravan-as-a-registry on real processes: registry services (``python -m registry``)
on a private redis-server, a fault-injecting proxy in front of the upstream one, Debian's ``docker-registry``
as a third-party OCI registry, and the official ``ollama`` client through a gateway.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import redis

from caravan.cluster import ClusterConfig, LocalCluster, _die_with_parent, free_port
from caravan.names import ModelName
from registry.oci import plan_parts
from registry.store import Manifest, Store
from tests.integration.helpers import wait_for
from tests.support.faultproxy import FaultProxy
from tests.support.registries import RegistryProcess, blob_names, manifest_files, same_blobs, seed_store

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
MIN_PART = 8_000_000
SUCCESS = {"status": "success"}
Factory = Callable[..., RegistryProcess]
_databases = itertools.count(1)


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server: every registry here gets its own database (job ids are per database)."""
    embedded = LocalCluster(ClusterConfig(models=tmp_path_factory.mktemp("unused"),
                                          log_dir=tmp_path_factory.mktemp("pull-redis")))
    embedded.start_redis()
    yield embedded.redis_url.rsplit("/", 1)[0]
    embedded.stop()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pull-logs")


@pytest.fixture(scope="module")
def upstream(demo_store: Path, redis_base: str, logs: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """Registry A: the demo model as ``smollm2:135m`` and ``smollm2:alias``."""
    store = tmp_path_factory.mktemp("upstream")
    seed_store(demo_store, store, [(MODEL, MODEL), (MODEL, "smollm2:alias")])
    running = RegistryProcess(store, f"{redis_base}/0", logs).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def proxy(upstream: RegistryProcess) -> Iterator[FaultProxy]:
    running = FaultProxy(upstream.url).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def demo(upstream: RegistryProcess) -> Manifest:
    return Store(upstream.store).read_manifest(ModelName.parse(MODEL)).manifest


@pytest.fixture
def registry(redis_base: str, logs: Path, tmp_path: Path, proxy: FaultProxy) -> Iterator[Factory]:
    """Start registries whose upstream is the proxy in front of A (small parts, fast retries)."""
    proxy.reset()
    started: list[RegistryProcess] = []

    def make(name: str, store: Path | None = None, redis_url: str = "", **env: str) -> RegistryProcess:
        if not redis_url:
            redis_url = f"{redis_base}/{next(_databases) % 15 + 1}"
            redis.Redis.from_url(redis_url).flushdb()
        settings = {"CARAVAN_UPSTREAM": proxy.url, "CARAVAN_PULL_MIN_PART": str(MIN_PART),
                    "CARAVAN_TRANSFER_STREAMS": "4", **env}
        running = RegistryProcess(store or tmp_path / name, redis_url, logs, settings).start()
        started.append(running)
        return running

    yield make
    proxy.resume()
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def docker_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) on a free loopback port, filesystem storage."""
    binary = shutil.which("docker-registry") or shutil.which("docker-registry", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("docker-registry is not installed (apt-get install -y docker-registry)")
    root, port = tmp_path_factory.mktemp("docker-registry"), free_port()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=(root / "log").open("wb"),
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    _wait_ok(f"http://127.0.0.1:{port}/v2/", proc)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def _wait_ok(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        assert proc.poll() is None, "docker-registry exited"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        proc_wait(proc)
    raise AssertionError(f"{url} never answered")


def proc_wait(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(0.05)


def statuses(lines: list[dict[str, Any]]) -> list[str]:
    return [line.get("status") or f"error: {line.get('error')}" for line in lines]


def model_layer(manifest: Manifest) -> tuple[str, int]:
    layer = manifest.layer("model")
    assert layer is not None
    return layer.digest, layer.size


class Follower(threading.Thread):
    """A streaming pull in a thread; ``attached`` is set once its first progress line arrived."""

    def __init__(self, registry: RegistryProcess, model: str) -> None:
        super().__init__(daemon=True)
        self.registry, self.model = registry, model
        self.attached = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.registry.url}/api/pull", json={"model": self.model}, timeout=300) as r:
                for line in r.iter_lines():
                    if line.strip():
                        self.lines.append(json.loads(line))
                        self.attached.set()
        except httpx.HTTPError as exc:
            self.failure = exc
            self.attached.set()


# -- pull from another Caravan ----------------------------------------------------------------------------------
def test_pull_from_another_caravan_is_byte_identical(registry: Factory, upstream: RegistryProcess,
                                                      demo: Manifest) -> None:
    b = registry("b")
    name = f"{upstream.host}/library/{MODEL}"
    lines = b.transfer("pull", name, insecure=True)
    digest, size = model_layer(demo)
    assert statuses(lines)[0] == "pulling manifest"
    assert statuses(lines)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [line for line in lines if line.get("digest") == digest]
    assert progress[0]["status"] == f"pulling {digest[7:19]}" and progress[-1]["completed"] == size
    assert [p.get("completed", 0) for p in progress] == sorted(p.get("completed", 0) for p in progress)
    pulled = Store(b.store).read_manifest(ModelName.parse(name))
    assert pulled.raw == Store(upstream.store).read_manifest(ModelName.parse(MODEL)).raw
    assert (b.store / "manifests" / upstream.host / "library" / "smollm2" / "135m").is_file()
    assert same_blobs(b.store, upstream.store, demo.all_digests())
    assert len(blob_names(b.store)) == 3, "no -partial or state files left behind"


# -- the LAN mirror -------------------------------------------------------------------------------------------------
def test_lan_mirror_fetches_once_then_serves_from_its_store(registry: Factory, proxy: FaultProxy,
                                                              upstream: RegistryProcess, demo: Manifest) -> None:
    b = registry("b")
    total = demo.size
    proxy.hold(0)  # hold the first blob body until all three clients are attached to the one job
    followers = [Follower(b, MODEL) for _ in range(3)]
    for follower in followers:
        follower.start()
    assert all(f.attached.wait(60) for f in followers) and proxy.paused.wait(60)
    proxy.resume()
    for follower in followers:
        follower.join(120)
    assert [f.lines[-1] for f in followers] == [SUCCESS] * 3
    assert followers[0].lines == followers[1].lines == followers[2].lines, "three clients, one job"
    assert proxy.blob_bytes == total, "every blob crossed the upstream link exactly once"

    manifests_before = len(proxy.manifest_requests())
    assert b.transfer("pull", MODEL)[-1] == SUCCESS
    assert proxy.blob_bytes == total and len(proxy.manifest_requests()) == manifests_before + 1

    c = registry("c", CARAVAN_UPSTREAM=b.url)  # another Caravan using B as its registry
    assert c.transfer("pull", MODEL)[-1] == SUCCESS
    assert same_blobs(c.store, upstream.store, demo.all_digests())
    assert proxy.blob_bytes == total, "C was served from B's store"

    assert c.transfer("pull", "smollm2:alias")[-1] == SUCCESS  # B misses it: pull-through from A
    assert (b.store / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "alias").is_file()
    assert any(s.path.endswith("/manifests/alias") for s in proxy.manifest_requests())
    assert proxy.blob_bytes == total


# -- faults -----------------------------------------------------------------------------------------------------------
def test_dropped_connections_resume_without_refetching(registry: Factory, proxy: FaultProxy, demo: Manifest) -> None:
    b = registry("b")
    digest, size = model_layer(demo)
    proxy.drop_at = [20_000_000, 60_000_000]
    assert b.transfer("pull", MODEL)[-1] == SUCCESS
    assert proxy.drops == 2
    assert b.metric("caravan_registry_pull_bytes_total") == demo.size, "no byte was fetched twice"
    boundaries = {part.offset for part in plan_parts(size, MIN_PART, 1_000_000_000)}
    starts = [int(re.findall(r"\d+", s.range)[0]) for s in proxy.blob_requests(digest) if s.range]
    assert any(start not in boundaries for start in starts), "a dropped part resumed mid-way"
    assert Store(b.store).has_blob(digest)


def _part_states(store: Path) -> list[dict[str, int]]:
    return [json.loads(p.read_text()) for p in (store / "blobs").glob("*-partial-*") if p.suffix != ".tmp"]


def test_pull_resumes_after_a_registry_restart(registry: Factory, proxy: FaultProxy, demo: Manifest) -> None:
    b = registry("b")
    digest, size = model_layer(demo)
    proxy.hold(40_000_000)
    first = Follower(b, MODEL)
    first.start()
    assert proxy.paused.wait(60)
    b.stop(signal.SIGKILL)
    states = _part_states(b.store)
    done = [(s["Offset"], s["Size"]) for s in states if s["Completed"] == s["Size"]]
    saved = sum(s["Completed"] for s in states)
    assert done and 0 < saved < size
    proxy.seen.clear()
    proxy.resume()
    b.start()  # the job is still queued: it runs again at once, from the part files
    assert b.transfer("pull", MODEL)[-1] == SUCCESS
    assert b.metric("caravan_registry_pull_bytes_total") == demo.size - saved
    starts = [int(re.findall(r"\d+", s.range)[0]) for s in proxy.blob_requests(digest) if s.range]
    assert starts, "the rest came in ranged GETs"
    assert not any(offset <= start < offset + length for start in starts for offset, length in done), \
        "a finished part was fetched again"
    first.join(30)


def test_corrupted_blob_is_a_digest_error_and_leaves_nothing(registry: Factory, proxy: FaultProxy,
                                                              demo: Manifest) -> None:
    b = registry("b")
    proxy.corrupt_digest = demo.config.digest  # the last blob: the model and params are already in by then
    lines = b.transfer("pull", MODEL)
    want = demo.config.digest
    assert re.fullmatch(rf"digest mismatch, file must be downloaded again: want {want}, got sha256:[0-9a-f]{{64}}",
                        lines[-1]["error"])
    assert any(line.get("digest") == model_layer(demo)[0] for line in lines)
    assert blob_names(b.store) == [] and manifest_files(b.store) == []


def test_upstream_errors_are_clear_lines(registry: Factory, proxy: FaultProxy) -> None:
    b = registry("b", CARAVAN_TRANSFER_RETRIES="2")
    proxy.manifest_status = 404
    assert b.transfer("pull", MODEL) == [{"status": "pulling manifest"},
                                         {"error": "pull model manifest: file does not exist"}]
    proxy.manifest_status = 401
    assert b.transfer("pull", MODEL)[-1]["error"].startswith("pull model manifest: unauthorized: access denied")
    proxy.manifest_status = 500
    assert b.transfer("pull", MODEL)[-1]["error"].startswith("pull model manifest: 500: ")
    reply = httpx.post(f"{b.url}/api/pull", json={"model": MODEL, "stream": False}, timeout=60)
    assert reply.status_code == 500 and reply.json()["error"].startswith("pull model manifest: 500")
    assert blob_names(b.store) == [] and manifest_files(b.store) == []


def test_bearer_challenge_is_answered(registry: Factory, proxy: FaultProxy) -> None:
    b = registry("b")
    proxy.token = "s3cret"
    assert b.transfer("pull", MODEL)[-1] == SUCCESS
    assert any(s.status == 401 for s in proxy.seen)
    token_url = proxy.token_requests[0]
    assert all(part in token_url for part in ("service=proxy", "scope=repository", "ts=", "nonce="))


def test_transfers_wait_for_redis(registry: Factory, tmp_path: Path) -> None:
    port = free_port()
    b = registry("b", redis_url=f"redis://127.0.0.1:{port}/0")  # nothing listens there yet
    early = httpx.post(f"{b.url}/api/pull", json={"model": MODEL}, timeout=30)
    assert early.status_code == 503 and "Redis" in early.json()["error"]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent)
    try:
        def pulled() -> bool:
            reply = httpx.post(f"{b.url}/api/pull", json={"model": MODEL, "stream": False}, timeout=60)
            return reply.status_code == 200 and reply.json() == SUCCESS

        wait_for(pulled, timeout=60, what="the registry to find Redis and pull")
    finally:
        server.terminate()
        server.wait(10)


# -- push ------------------------------------------------------------------------------------------------------------
def test_push_to_docker_registry_then_pull_back(registry: Factory, docker_registry: str, demo_store: Path,
                                                tmp_path: Path, demo: Manifest) -> None:
    target = f"{docker_registry}/team/smol:v1"
    b = registry("b", store=seed_store(demo_store, tmp_path / "seed", [(MODEL, target)]).root)
    lines = b.transfer("push", target, insecure=True)
    digest, _ = model_layer(demo)
    assert statuses(lines)[0] == "retrieving manifest" and statuses(lines)[-2:] == ["pushing manifest", "success"]
    assert f"pushing {digest[7:19]}" in statuses(lines)
    c = registry("c")
    assert c.transfer("pull", target, insecure=True)[-1] == SUCCESS
    raw = Store(b.store).read_manifest(ModelName.parse(target)).raw
    assert Store(c.store).read_manifest(ModelName.parse(target)).raw == raw
    assert same_blobs(c.store, b.store, demo.all_digests())


def test_push_to_caravan_then_again_skips_present_blobs(registry: Factory, demo_store: Path, tmp_path: Path,
                                                         demo: Manifest) -> None:
    c = registry("c")
    target = f"{c.host}/team/smol:v1"
    b = registry("b", store=seed_store(demo_store, tmp_path / "seed", [(MODEL, target)]).root)
    assert b.transfer("push", target, insecure=True)[-1] == SUCCESS
    raw = Store(b.store).read_manifest(ModelName.parse(target)).raw
    assert Store(c.store).read_manifest(ModelName.parse("team/smol:v1")).raw == raw
    assert same_blobs(c.store, b.store, demo.all_digests())
    again = b.transfer("push", target, insecure=True)
    assert len([line for line in again if "digest" in line]) == 3, "present blobs: one complete line each"


# -- the official client through a gateway ---------------------------------------------------------------------------
def test_ollama_client_pulls_through_the_gateway(gateway: str, cluster: LocalCluster, upstream: RegistryProcess,
                                                 demo: Manifest) -> None:
    client = ollama.Client(host=gateway)
    name = f"{upstream.host}/library/{MODEL}"
    try:
        progress = list(client.pull(name, insecure=True, stream=True))
        assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
        digest, size = model_layer(demo)
        assert any(p.digest == digest and p.completed == p.total == size for p in progress)
        assert name in [m.model for m in client.list().models]
        assert client.pull(name, insecure=True).status == "success"
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            client.pull(f"{upstream.host}/library/missing:1", insecure=True)
    finally:
        Store(cluster.config.models).delete_manifest(ModelName.parse(name))
