"""Failures survived, on real processes (issue 4): kill -9 mid-stream, SIGTERM drain, Redis restart,
eviction under a small memory budget, and 503 on a full queue."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from caravan import keys
from caravan.cluster import ClusterConfig, LocalCluster, free_port
from tests.integration.helpers import ps, reply_event, wait_for

MODEL = "smollm2:135m"
COUNTING = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "raw": True}


def make_cluster(store: Path, logs: Path, workers: int, **gateway_env: str) -> LocalCluster:
    cluster = LocalCluster(ClusterConfig(models=store, gateway_port=free_port(), workers=workers, log_dir=logs,
                                         worker_env={"CARAVAN_N_THREADS": "1"},
                                         gateway_env={"OLLAMA_NUM_PARALLEL": "1", **gateway_env}))
    cluster.start()
    return cluster


@pytest.fixture
def pair(demo_store: Path, tmp_path: Path) -> Iterator[LocalCluster]:
    """Two workers and a private Redis, rebuilt per test since these tests break things."""
    cluster = make_cluster(demo_store, tmp_path, 2)
    yield cluster
    cluster.stop()


def worker_proc(cluster: LocalCluster, worker_id: str):  # type: ignore[no-untyped-def]
    return cluster.procs[worker_id]


def test_kill_after_streaming_began_ends_with_error_line(pair: LocalCluster) -> None:
    body = {**COUNTING, "options": {"temperature": 0, "num_predict": 500}}
    with httpx.stream("POST", pair.gateway_url + "/api/generate", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert not json.loads(next(lines))["done"]
        worker_proc(pair, response.headers["x-caravan-worker"]).send_signal(signal.SIGKILL)
        rest = [json.loads(line) for line in lines if line]
    assert rest and "error" in rest[-1], "the stream ends with an error line"
    assert "stopped" in rest[-1]["error"]
    assert not any(chunk.get("done") for chunk in rest)


def test_kill_before_first_token_is_retried_elsewhere(pair: LocalCluster) -> None:
    request_id = uuid.uuid4().hex
    prompt = "The quick brown fox jumps over the lazy dog. " * 120
    body = {"model": MODEL, "prompt": prompt, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": 4}}
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", httpx.post(
        pair.gateway_url + "/api/generate", json=body, headers={"X-Request-Id": request_id}, timeout=300)))
    thread.start()
    first_worker = reply_event(pair.redis_url, request_id, "start").worker
    assert first_worker is not None
    worker_proc(pair, first_worker).send_signal(signal.SIGKILL)
    thread.join(300)
    response = result["r"]
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True and response.json()["eval_count"] == 4
    assert response.headers["x-caravan-worker"] not in ("", first_worker)


def test_a_request_handed_to_a_worker_that_just_died_is_served_elsewhere(demo_store: Path, tmp_path: Path) -> None:
    """An idle worker's word that it waits (4 free slots) outlives a kill -9 by up to IDLE_FRESH seconds: the
    request handed over in that window is served by the other worker, and never handed to the dead one again."""
    cluster = make_cluster(demo_store, tmp_path, 2, OLLAMA_NUM_PARALLEL="4")
    try:
        body = {**COUNTING, "stream": False, "options": {"temperature": 0, "num_predict": 3}}
        first = httpx.post(cluster.gateway_url + "/api/generate", json=body, timeout=120)
        assert first.status_code == 200, first.text
        dead = first.headers["x-caravan-worker"]
        client = redis.Redis.from_url(cluster.redis_url)
        idle = keys.idle("*")
        wait_for(lambda: client.keys(idle) and client.zscore(client.keys(idle)[0], dead),
                 what="the worker waiting for its next request")
        worker_proc(cluster, dead).send_signal(signal.SIGKILL)
        worker_proc(cluster, dead).wait(30)
        response = httpx.post(cluster.gateway_url + "/api/generate", json=body, timeout=300)
        assert response.status_code == 200, response.text
        assert response.headers["x-caravan-worker"] not in ("", dead)
        inbox = client.keys(keys.inbox("*", dead))
        assert inbox and client.xlen(inbox[0]) == 1, "the request was handed to the dead worker first, once"
    finally:
        cluster.stop()


def test_sigterm_drains_in_flight_request(pair: LocalCluster) -> None:
    body = {**COUNTING, "options": {"temperature": 0, "num_predict": 40}}
    with httpx.stream("POST", pair.gateway_url + "/api/generate", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert not json.loads(next(lines))["done"]
        worker = response.headers["x-caravan-worker"]
        worker_proc(pair, worker).send_signal(signal.SIGTERM)
        chunks = [json.loads(line) for line in lines if line]
    assert chunks[-1]["done"] is True and chunks[-1]["eval_count"] == 40, "the in-flight request finished"
    assert worker_proc(pair, worker).wait(60) == 0
    client = redis.Redis.from_url(pair.redis_url)
    assert not client.exists(keys.worker(worker)), "a drained worker leaves the cluster"
    after = httpx.post(pair.gateway_url + "/api/generate", json={**body, "stream": False}, timeout=120)
    assert after.status_code == 200 and after.headers["x-caravan-worker"] != worker


def test_redis_restart_is_survived(pair: LocalCluster) -> None:
    body = {**COUNTING, "stream": False, "options": {"temperature": 0, "num_predict": 3}}
    assert httpx.post(pair.gateway_url + "/api/generate", json=body, timeout=120).status_code == 200
    pair.restart_redis()

    def served() -> bool:
        response = httpx.post(pair.gateway_url + "/api/generate", json=body, timeout=120)
        assert response.status_code in (200, 503), response.text
        return response.status_code == 200

    wait_for(served, timeout=60, what="the cluster to serve again after a Redis restart")
    for _ in range(3):
        assert httpx.post(pair.gateway_url + "/api/generate", json=body, timeout=120).status_code == 200


@pytest.fixture(scope="module")
def small(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One worker with room for one copy of the model, and a queue of one."""
    cluster = LocalCluster(ClusterConfig(
        models=demo_store, gateway_port=free_port(), workers=1, log_dir=tmp_path_factory.mktemp("small-logs"),
        worker_env={"CARAVAN_N_THREADS": "1", "CARAVAN_MEMORY_BUDGET": str(300 << 20)},
        gateway_env={"OLLAMA_MAX_QUEUE": "1", "OLLAMA_NUM_PARALLEL": "1"},
    ))
    cluster.start()
    yield cluster
    cluster.stop()


def test_idle_model_evicted_for_a_new_one(small: LocalCluster) -> None:
    gateway = small.gateway_url
    quick = {"temperature": 0, "num_predict": 2}
    assert httpx.post(gateway + "/api/generate", json={"model": MODEL, "prompt": "a", "stream": False,
                                                       "options": quick}, timeout=120).status_code == 200
    assert [e["context_length"] for e in ps(gateway)] == [4096]
    second = httpx.post(gateway + "/api/generate", json={"model": MODEL, "prompt": "a", "stream": False,
                                                         "options": {**quick, "num_ctx": 2048}}, timeout=120)
    assert second.status_code == 200
    assert [e["context_length"] for e in ps(gateway)] == [2048], "the idle 4096-context copy was evicted"


def test_model_bigger_than_any_worker_is_a_clear_error(small: LocalCluster) -> None:
    response = httpx.post(small.gateway_url + "/api/generate", json={
        "model": MODEL, "prompt": "a", "options": {"num_ctx": 8192, "num_predict": 1}}, timeout=120)
    assert response.status_code == 500 and "more memory" in response.json()["error"]


def test_full_queue_answers_503(small: LocalCluster) -> None:
    gateway = small.gateway_url
    busy = {**COUNTING, "options": {"temperature": 0, "num_predict": 300, "num_ctx": 2048}}
    client = redis.Redis.from_url(small.redis_url)
    with httpx.stream("POST", gateway + "/api/generate", json=busy, timeout=120) as running:
        lines = running.iter_lines()  # keep the iterator: dropping it closes the stream (a client disconnect)
        assert not json.loads(next(lines))["done"]
        queues = list(client.scan_iter(keys.user_queue("*", "*")))
        waiting = threading.Thread(target=lambda: httpx.post(gateway + "/api/generate", json={
            **busy, "stream": False, "options": {**busy["options"], "num_predict": 1}}, timeout=120))
        waiting.start()
        wait_for(lambda: sum(client.xlen(q) for q in queues) == 1, what="the second request to wait in the queue")
        refused = httpx.post(gateway + "/api/generate", json=busy, timeout=60)
        assert refused.status_code == 503
        assert refused.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    waiting.join(120)


def test_client_leaving_while_queued_is_never_run(small: LocalCluster) -> None:
    gateway = small.gateway_url
    busy = {**COUNTING, "options": {"temperature": 0, "num_predict": 200, "num_ctx": 2048}}
    quick = {**busy, "stream": False, "options": {**busy["options"], "num_predict": 2}}
    abandoned = uuid.uuid4().hex
    client = redis.Redis.from_url(small.redis_url)
    with httpx.stream("POST", gateway + "/api/generate", json=busy, timeout=120) as running:
        lines = running.iter_lines()
        assert not json.loads(next(lines))["done"]
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its request waits in the queue
            httpx.post(gateway + "/api/generate", json=quick, timeout=1.5, headers={"X-Request-Id": abandoned})
        wait_for(lambda: client.exists(keys.cancel(abandoned)), what="the gateway to flag the cancel")
        list(lines)
    after = httpx.post(gateway + "/api/generate", json=quick, timeout=120)
    assert after.status_code == 200, "a later request from the same queue was served"
    events = client.xrange(keys.reply(abandoned))
    assert not events, "the abandoned request never started on a worker"
