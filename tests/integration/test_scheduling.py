"""Scheduling on real processes: 2 workers, real llama.cpp, real Redis (issue 4).

Placement, load-time options as separate copies, keep_alive forms, /api/ps, replicas and session affinity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from caravan.cluster import ClusterConfig, LocalCluster, free_port
from tests.integration.helpers import ps, wait_for

MODEL = "smollm2:135m"
QUICK = {"temperature": 0, "num_predict": 3}


@pytest.fixture(scope="module")
def pool(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two workers on a private Redis; replicas as soon as one request waits."""
    cluster = LocalCluster(ClusterConfig(
        models=demo_store, gateway_port=free_port(), workers=2, log_dir=tmp_path_factory.mktemp("pool-logs"),
        worker_env={"CARAVAN_N_THREADS": "1"},
        gateway_env={"CARAVAN_REPLICA_QUEUE_DEPTH": "0", "OLLAMA_NUM_PARALLEL": "1"},
    ))
    cluster.start()
    yield cluster
    cluster.stop()


def generate(gateway: str, **body: object) -> httpx.Response:
    return httpx.post(gateway + "/api/generate", json={"model": MODEL, "stream": False, **body}, timeout=180)


def unload_all(gateway: str) -> None:
    assert generate(gateway, keep_alive=0).json()["done_reason"] == "unload"
    wait_for(lambda: not ps(gateway), what="models to unload")


def test_ps_lists_loaded_model_with_worker(pool: LocalCluster) -> None:
    gateway = pool.gateway_url
    response = generate(gateway, prompt="Hi", options=QUICK)
    assert response.status_code == 200
    entries = ps(gateway)
    assert len(entries) == 1
    entry = entries[0]
    tags = httpx.get(gateway + "/api/tags").json()["models"]
    assert entry["name"] == MODEL and entry["digest"] == next(m["digest"] for m in tags if m["name"] == MODEL)
    assert entry["context_length"] == 4096 and entry["size"] > 90_000_000 and entry["size_vram"] == 0
    assert entry["worker"] == response.headers["x-caravan-worker"]
    assert isinstance(entry["details"], dict) and entry["details"]["family"] == "llama"


def test_load_time_options_get_their_own_copy(pool: LocalCluster) -> None:
    gateway = pool.gateway_url
    assert generate(gateway, prompt="Hi", options={**QUICK, "num_ctx": 1024}).status_code == 200
    contexts = sorted(int(str(e["context_length"])) for e in ps(gateway))
    assert 1024 in contexts and 4096 in contexts
    unload_all(gateway)


def test_keep_alive_zero_unloads_after_the_request(pool: LocalCluster) -> None:
    gateway = pool.gateway_url
    assert generate(gateway, prompt="Hi", options=QUICK, keep_alive=0).status_code == 200
    wait_for(lambda: not ps(gateway), what="keep_alive 0 to unload the model")


def test_keep_alive_expiry_and_forever(pool: LocalCluster) -> None:
    gateway = pool.gateway_url
    assert generate(gateway, prompt="Hi", options=QUICK, keep_alive="1s").status_code == 200
    wait_for(lambda: not ps(gateway), what="a 1 s keep_alive to expire")
    assert generate(gateway, prompt="Hi", options=QUICK, keep_alive=-1).status_code == 200
    assert str(ps(gateway)[0]["expires_at"]).startswith("2318")
    unload_all(gateway)


def test_load_request_then_unload_request(pool: LocalCluster) -> None:
    gateway = pool.gateway_url
    assert generate(gateway).json()["done_reason"] == "load"
    assert len(ps(gateway)) == 1
    unload_all(gateway)


def test_replica_added_when_requests_wait(pool: LocalCluster) -> None:
    gateway = pool.gateway_url
    long = {"temperature": 0, "num_predict": 24}

    def burst() -> list[httpx.Response]:
        with ThreadPoolExecutor(4) as executor:
            return list(executor.map(lambda i: generate(gateway, prompt=f"Story {i}:", options=long), range(4)))

    assert all(r.status_code == 200 for r in burst())
    holders = {e["worker"] for e in ps(gateway)}
    assert holders == {"worker-0", "worker-1"}, "the busy model was replicated onto the second worker"
    served = {r.headers["x-caravan-worker"] for r in burst()}
    assert served == holders, "with both replicas loaded, a burst is shared between them"


def test_next_chat_turn_prefers_the_same_worker(pool: LocalCluster) -> None:
    gateway = pool.gateway_url
    assert len({e["worker"] for e in ps(gateway)}) == 2, "needs the replicas of the previous test"
    messages = [{"role": "user", "content": "Remember the word apple."}]
    first = httpx.post(gateway + "/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                                     "options": QUICK}, timeout=120)
    worker = first.headers["x-caravan-worker"]
    history = [*messages, first.json()["message"]]
    for turn in range(3):
        history.append({"role": "user", "content": f"And now turn {turn}?"})
        reply = httpx.post(gateway + "/api/chat", json={"model": MODEL, "messages": history, "stream": False,
                                                         "options": QUICK}, timeout=120)
        assert reply.headers["x-caravan-worker"] == worker
        history.append(reply.json()["message"])


def test_remote_worker_fetches_and_verifies_blob(pool: LocalCluster, tmp_path: Path) -> None:
    import asyncio

    from worker.blobs import BlobCache

    blob = next(p for p in (Path(pool.config.models) / "blobs").iterdir() if p.stat().st_size > 50_000_000)
    digest = "sha256:" + blob.name.removeprefix("sha256-")
    assert httpx.get(f"{pool.registry_url}/internal/blobs/{digest}").status_code == 401, "needs the token"
    cache = BlobCache(pool.registry_url, tmp_path / "cache", models=None, token=pool.internal_token)
    fetched = asyncio.run(cache.path(digest))
    assert fetched.parent == tmp_path / "cache"
    assert "sha256:" + hashlib.sha256(fetched.read_bytes()).hexdigest() == digest
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
