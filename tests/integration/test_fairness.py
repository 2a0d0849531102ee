"""Fair sharing on a real cluster with API keys (issue 6): one user's flood does not starve another user.

One worker, one slot. User A queues eight requests; then user B sends one. Workers take users in turn, so B's
request completes right after the request that was running when it arrived (ordering measured, no sleeps).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from caravan import fairqueue
from caravan.cluster import ClusterConfig, LocalCluster, free_port
from tests.integration.helpers import wait_for

ADMIN = "cvn_" + secrets.token_hex(16)
BODY = {"model": "smollm2:135m", "prompt": "1, 2, 3,", "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": 8}}


@pytest.fixture(scope="module")
def keyed(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(ClusterConfig(
        models=demo_store, gateway_port=free_port(), workers=1, log_dir=tmp_path_factory.mktemp("fair-logs"),
        worker_env={"CARAVAN_N_THREADS": "1"},
        gateway_env={"CARAVAN_AUTH": "true", "CARAVAN_ADMIN_KEY": ADMIN, "OLLAMA_NUM_PARALLEL": "1"}))
    cluster.start()
    yield cluster
    cluster.stop()


def user_key(cluster: LocalCluster, name: str) -> str:
    response = httpx.post(cluster.gateway_url + "/api/keys", json={"name": name, "role": "user"},
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert response.status_code == 200, response.text
    key: str = response.json()["key"]
    return key


def test_flooding_user_does_not_starve_another(keyed: LocalCluster) -> None:
    flood, single = user_key(keyed, "flood"), user_key(keyed, "single")
    gateway = keyed.gateway_url
    assert httpx.post(gateway + "/api/generate", json={"model": BODY["model"]},
                      headers={"Authorization": f"Bearer {flood}"}, timeout=120).status_code == 200  # loaded
    done: list[tuple[float, str]] = []
    lock = threading.Lock()

    def ask(key: str, label: str) -> None:
        response = httpx.post(gateway + "/api/generate", json=BODY, headers={"Authorization": f"Bearer {key}"},
                              timeout=300)
        assert response.status_code == 200, response.text
        with lock:
            done.append((time.monotonic(), label))

    threads = [threading.Thread(target=ask, args=(flood, f"a{n}")) for n in range(8)]
    for thread in threads:
        thread.start()
    store = redis.Redis.from_url(keyed.redis_url)
    spec = wait_for(lambda: next((k.decode().split(":")[-1] for k in store.scan_iter("caravan:qusers:*")), None),
                    what="the flood to be queued")
    wait_for(lambda: asyncio_depth(keyed.redis_url, spec) >= 6, what="six of A's requests waiting")
    submitted = time.monotonic()
    b = threading.Thread(target=ask, args=(single, "b"))
    b.start()
    for thread in [*threads, b]:
        thread.join(300)
    after = [label for at, label in sorted(done) if at > submitted]
    assert after.index("b") <= 1, f"B finished behind {after.index('b')} of A's requests: {after}"
    assert len(done) == 9


def asyncio_depth(redis_url: str, spec: str) -> int:
    """Requests waiting for ``spec`` over every user (caravan.fairqueue.depth, run synchronously)."""
    import asyncio

    from redis.asyncio import Redis

    async def read() -> int:
        client = Redis.from_url(redis_url)
        try:
            return await fairqueue.depth(client, spec)
        finally:
            await client.aclose()

    return asyncio.run(read())
