"""Metrics (gateway, worker, registry) on injected registries, the cluster status shape, the access middleware
and the ``caravan status`` tables: in-process, no Redis."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from caravan.cli.status import render
from caravan.queue import Event, LoadedModelState, LoadSpec, WorkerState
from caravan.settings import WorkerSettings
from caravan.wire.status import QueueDepth, build_status, prometheus_targets, rfc3339
from gateway.access import AccessMiddleware
from gateway.metrics import GatewayMetrics, RequestLabels, current_request
from registry.metrics import RegistryMetrics
from registry.store import Store
from worker.metrics import WorkerMetrics, route_address

MODEL = "smollm2:135m"


def spec(model: str = MODEL) -> LoadSpec:
    return LoadSpec(model=model, blob="sha256:" + "ab" * 32, size=100)


def worker_state(wid: str = "w1", in_flight: int = 1, slots: int = 2, url: str | None = None) -> WorkerState:
    loaded = LoadedModelState(spec=spec(), slots=slots, in_flight=in_flight, size=100, expires_at=None)
    return WorkerState(id=wid, host="box", memory_budget=1000, memory_used=100, models=[loaded], metrics_url=url)


def sample_registries(tmp: Path) -> list[CollectorRegistry]:
    """One registry per service, every custom collector fed a sample (for name checks)."""
    gateway = GatewayMetrics(CollectorRegistry())
    gateway.cluster.update(build_status([worker_state()], [QueueDepth("s1", MODEL, 3)]))
    worker = WorkerMetrics("w1", CollectorRegistry())
    worker.observe_state(worker_state())
    registry = RegistryMetrics(Store(tmp), CollectorRegistry())
    return [gateway.registry, worker.registry, registry.registry]


# -- gateway -----------------------------------------------------------------------------------------------
def test_request_observer_follows_a_request_through_its_events() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    observer = metrics.request(MODEL, started=time.perf_counter() - 0.5)
    assert value("caravan_requests_deferred", {"model": MODEL}) == 1
    observer.event(Event(t="start", worker="w1"))
    assert value("caravan_requests_deferred", {"model": MODEL}) == 0
    assert value("caravan_requests_processing", {"model": MODEL}) == 1
    assert value("caravan_request_queue_time_seconds_count", {"model": MODEL}) == 1
    observer.event(Event(t="tok", text="a"))
    observer.event(Event(t="tok", text="b"))
    assert value("caravan_time_to_first_token_seconds_count", {"model": MODEL}) == 1
    assert (value("caravan_time_to_first_token_seconds_sum", {"model": MODEL}) or 0) >= 0.5
    observer.event(Event(t="done", done_reason="stop"))
    observer.close()
    assert value("caravan_requests_processing", {"model": MODEL}) == 0
    assert value("caravan_e2e_request_latency_seconds_count", {"model": MODEL}) == 1


def test_abandoned_and_load_only_requests_leave_gauges_balanced() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    metrics.request(MODEL).close()
    loading = metrics.request(MODEL)
    loading.event(Event(t="start"))
    loading.event(Event(t="done", done_reason="load"))
    loading.close()
    assert value("caravan_requests_deferred", {"model": MODEL}) == 0
    assert value("caravan_requests_processing", {"model": MODEL}) == 0
    assert value("caravan_e2e_request_latency_seconds_count", {"model": MODEL}) is None


def test_observer_labels_the_current_http_request() -> None:
    labels = RequestLabels()
    token = current_request.set(labels)
    try:
        GatewayMetrics(CollectorRegistry()).request(MODEL)
    finally:
        current_request.reset(token)
    assert labels.model == MODEL


def test_cluster_collector_reports_queue_depth_and_redis_health() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    metrics.cluster.update(None)
    assert value("caravan_redis_up") == 0 and value("caravan_queue_depth", {"model": MODEL}) is None
    metrics.cluster.update(build_status([worker_state()], [QueueDepth("s1", MODEL, 3)]))
    assert value("caravan_redis_up") == 1
    assert value("caravan_queue_depth", {"model": MODEL}) == 3
    assert value("caravan_cluster_requests_in_flight", {"model": MODEL}) == 1
    assert value("caravan_cluster_slots", {"model": MODEL}) == 2
    assert value("caravan_cluster_workers", {"state": "ready"}) == 1


def access_app(metrics: GatewayMetrics) -> Starlette:
    async def item(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/items/{item_id}", item)])
    app.add_middleware(AccessMiddleware, metrics=metrics)
    return app


async def test_access_middleware_counts_logs_and_tags_every_request(caplog: pytest.LogCaptureFixture) -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    transport = httpx.ASGITransport(app=access_app(metrics))
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.get("/items/42?secret=x", headers={"Authorization": "Bearer k"})
        echoed = await client.get("/items/7", headers={"X-Request-Id": "client-id.1"})
        unsafe = await client.get("/nowhere", headers={"X-Request-Id": "bad id!"})
    assert len(first.headers["x-request-id"]) == 32
    assert echoed.headers["x-request-id"] == "client-id.1"
    assert unsafe.status_code == 404 and unsafe.headers["x-request-id"] != "bad id!"
    value = metrics.registry.get_sample_value
    assert value("caravan_requests_total", {"endpoint": "/items/{item_id}", "model": "", "status": "200"}) == 2
    assert value("caravan_requests_total", {"endpoint": "unmatched", "model": "", "status": "404"}) == 1
    lines = [r for r in caplog.records if r.name == "gateway.access"]
    assert [(r.path, r.status) for r in lines] == [("/items/42", 200), ("/items/7", 200), ("/nowhere", 404)]  # type: ignore[attr-defined]
    assert "secret" not in caplog.text and "Bearer" not in caplog.text


# -- worker ------------------------------------------------------------------------------------------------
async def events(*items: Event) -> AsyncIterator[Event]:
    for item in items:
        yield item


async def test_worker_observe_passes_events_through_and_counts_tokens() -> None:
    metrics = WorkerMetrics("w1", CollectorRegistry())
    value = metrics.registry.get_sample_value
    stream = [Event(t="tok", text="a"), Event(t="tok", text="b"), Event(t="tok", text="c"),
              Event(t="done", done_reason="length", stats={"prompt_eval_count": 5, "eval_count": 3})]
    seen = [event async for event in metrics.observe(MODEL, events(*stream))]
    assert seen == stream
    labels = {"worker": "w1", "model": MODEL}
    assert value("caravan_prompt_tokens_total", labels) == 5
    assert value("caravan_tokens_predicted_total", labels) == 3
    assert value("caravan_inter_token_latency_seconds_count", labels) == 2
    assert value("caravan_worker_requests_total", {**labels, "reason": "length"}) == 1
    _ = [event async for event in metrics.observe(MODEL, events(Event(t="err", status=500, error="boom")))]
    assert value("caravan_worker_requests_total", {**labels, "reason": "error"}) == 1


def test_worker_counts_loads_by_result_and_unloads() -> None:
    metrics = WorkerMetrics("w1", CollectorRegistry())
    value = metrics.registry.get_sample_value
    with metrics.loading(MODEL):
        pass
    with pytest.raises(RuntimeError), metrics.loading(MODEL):
        raise RuntimeError("no memory")
    metrics.unloaded(MODEL)
    labels = {"worker": "w1", "model": MODEL}
    assert value("caravan_model_loads_total", {**labels, "result": "ok"}) == 1
    assert value("caravan_model_loads_total", {**labels, "result": "error"}) == 1
    assert value("caravan_model_load_seconds_count", labels) == 1
    assert value("caravan_model_unloads_total", labels) == 1


def test_worker_state_gauges_follow_the_heartbeat() -> None:
    metrics = WorkerMetrics("w1", CollectorRegistry())
    value = metrics.registry.get_sample_value
    assert value("caravan_worker_memory_budget_bytes", {"worker": "w1"}) is None
    state = worker_state(in_flight=1, slots=2)
    state.models.append(LoadedModelState(spec=spec().model_copy(update={"num_ctx": 8192}), slots=3, in_flight=2))
    metrics.observe_state(state)
    samples = [s for m in metrics.registry.collect() if m.name == "caravan_worker_slots" for s in m.samples]
    assert len(samples) == 1, "one series per model, whatever its load options"
    assert value("caravan_worker_slots", {"worker": "w1", "model": MODEL}) == 5
    assert value("caravan_worker_busy_slots", {"worker": "w1", "model": MODEL}) == 3
    assert value("caravan_worker_loaded_models", {"worker": "w1"}) == 2
    metrics.observe_state(worker_state(in_flight=1, slots=2))
    assert value("caravan_worker_memory_budget_bytes", {"worker": "w1"}) == 1000
    assert value("caravan_worker_memory_used_bytes", {"worker": "w1"}) == 100
    assert value("caravan_worker_loaded_models", {"worker": "w1"}) == 1
    assert value("caravan_worker_slots", {"worker": "w1", "model": MODEL}) == 2
    assert value("caravan_worker_busy_slots", {"worker": "w1", "model": MODEL}) == 1


def test_worker_metrics_server_serves_and_advertises_its_url() -> None:
    metrics = WorkerMetrics("w1", CollectorRegistry())
    metrics.observe_state(worker_state())
    settings = WorkerSettings(metrics_port=0, metrics_host="127.0.0.1", redis_url="redis://127.0.0.1:1/0")
    url = metrics.serve(settings)
    try:
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        assert 'caravan_worker_memory_budget_bytes{worker="w1"} 1000.0' in httpx.get(url).text
    finally:
        metrics.close()


def test_route_address_picks_the_interface_towards_redis() -> None:
    assert route_address("redis://127.0.0.1:6379/0") == "127.0.0.1"
    assert route_address("redis://:pw@localhost:6379/0") in ("127.0.0.1", "::1")
    assert route_address("unix:///run/redis.sock") == "127.0.0.1"


# -- registry ----------------------------------------------------------------------------------------------
def test_registry_store_gauges_and_pull_counters(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_blob_bytes(b"abc")
    (store.blobs / ("sha256-" + "0" * 64 + "-partial")).write_bytes(b"unfinished")
    metrics = RegistryMetrics(store, CollectorRegistry())
    value = metrics.registry.get_sample_value
    assert value("caravan_registry_store_bytes") == 3 and value("caravan_registry_blobs") == 1
    assert value("caravan_registry_models") == 0
    with metrics.pulling():
        metrics.pulled_bytes(1024)
    with pytest.raises(OSError), metrics.pulling():
        raise OSError("network down")
    assert value("caravan_registry_pulls_total", {"result": "success"}) == 1
    assert value("caravan_registry_pulls_total", {"result": "error"}) == 1
    assert value("caravan_registry_pull_bytes_total") == 1024


# -- status shape and CLI ----------------------------------------------------------------------------------
def test_build_status_sums_models_over_workers_and_queues() -> None:
    workers = [worker_state("w2", in_flight=0, slots=2), worker_state("w1", in_flight=1, slots=1)]
    queues = [QueueDepth("s1", MODEL, 4), QueueDepth("s2", "", 2), QueueDepth("s3", "", 0)]
    status = build_status(workers, queues)
    assert [w.id for w in status.workers] == ["w1", "w2"]
    rows = {m.model: m for m in status.models}
    assert set(rows) == {MODEL, "s2"}
    assert (rows[MODEL].queued, rows[MODEL].in_flight, rows[MODEL].slots) == (4, 1, 3)
    assert rows[MODEL].workers == ["w1", "w2"] and rows["s2"].queued == 2
    assert (status.queued, status.in_flight) == (6, 1)
    body = status.dump()
    assert "metrics_url" not in body["workers"][0] and "expires_at" not in body["workers"][0]["models"][0]  # type: ignore[index]
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_prometheus_targets_come_from_heartbeat_urls() -> None:
    groups = prometheus_targets([worker_state("w1", url="http://10.0.0.5:9400/metrics"), worker_state("w2"),
                                 worker_state("w3", url="http://[fd00::3]:9400/custom")])
    assert groups == [
        {"targets": ["10.0.0.5:9400"], "labels": {"worker": "w1", "device": "cpu", "__scheme__": "http",
                                                  "__metrics_path__": "/metrics"}},
        {"targets": ["[fd00::3]:9400"], "labels": {"worker": "w3", "device": "cpu", "__scheme__": "http",
                                                   "__metrics_path__": "/custom"}},
    ]


def test_status_tables_show_workers_models_and_queues() -> None:
    out = io.StringIO()
    render(build_status([worker_state("gpu-box", in_flight=1, slots=2)], [QueueDepth("s1", MODEL, 5)]),
           Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    assert "gpu-box" in text and f"{MODEL} 1/2" in text and "100 B / 1 KB" in text
    assert "1 worker(s), 5 queued, 1 in flight" in text
    empty = io.StringIO()
    render(build_status([], []), Console(file=empty, width=140, color_system=None))
    assert "no workers are running" in empty.getvalue()
