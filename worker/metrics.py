"""Every Prometheus metric a worker exports, declared here against an injectable ``CollectorRegistry``, and the
worker's ``/metrics`` HTTP server (prometheus_client's ``start_http_server``, a daemon thread).

Every series carries ``worker`` (the worker id) so dashboards can split by worker whatever the scrape target;
``model`` is the loaded model's name. Never request ids, prompts or keys.

    caravan_prompt_tokens_total{worker,model}              counter    prompt tokens evaluated (llama.cpp's name)
    caravan_tokens_predicted_total{worker,model}           counter    tokens generated (llama.cpp's name)
    caravan_inter_token_latency_seconds{worker,model}      histogram  between token events of one request (vLLM's)
    caravan_worker_requests_total{worker,model,reason}     counter    requests served, by done_reason or ``error``
    caravan_model_loads_total{worker,model,result}         counter    loads, ``ok`` or ``error``
    caravan_model_load_seconds{worker,model}               histogram  duration of successful loads
    caravan_model_unloads_total{worker,model}              counter    unloads (keep_alive expiry, eviction, API)
    caravan_worker_memory_used_bytes{worker}               gauge      ┐
    caravan_worker_memory_budget_bytes{worker}             gauge      │ from the last heartbeat, so they agree
    caravan_worker_loaded_models{worker}                   gauge      │ with /api/status/cluster
    caravan_worker_slots{worker,model}                     gauge      │
    caravan_worker_busy_slots{worker,model}                gauge      │
    caravan_worker_draining{worker}                        gauge      ┘
    process_*                                              the worker process (CPU, memory, fds)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from caravan.queue import Event, WorkerState
from caravan.settings import WorkerSettings

log = logging.getLogger("worker.requests")
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ANY_ADDRESS = ("0.0.0.0", "::", "")


def _gauge(name: str, doc: str, worker: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["worker"])
    family.add_metric([worker], value)
    return family


class StateCollector(Collector):
    """Memory, models and slots from the worker's last published heartbeat."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.state: WorkerState | None = None

    def collect(self) -> Iterator[Metric]:
        state, wid = self.state, self.worker_id
        if state is None:
            return
        yield _gauge("caravan_worker_memory_used_bytes", "Bytes held by loaded models (estimate)", wid,
                     state.memory_used)
        yield _gauge("caravan_worker_memory_budget_bytes", "Memory budget for models", wid, state.memory_budget)
        yield _gauge("caravan_worker_loaded_models", "Loaded models (one per model and load options)", wid,
                     len(state.models))
        yield _gauge("caravan_worker_draining", "1 while finishing requests before exit", wid, int(state.draining))
        slots = GaugeMetricFamily("caravan_worker_slots", "Slots of a loaded model", labels=["worker", "model"])
        busy = GaugeMetricFamily("caravan_worker_busy_slots", "Slots generating now", labels=["worker", "model"])
        totals: dict[str, tuple[int, int]] = {}  # one series per model, over the specs (load options) it has
        for model in state.models:
            held, running = totals.get(model.spec.model, (0, 0))
            totals[model.spec.model] = held + model.slots, running + model.in_flight
        for name, (held, running) in sorted(totals.items()):
            slots.add_metric([wid, name], held)
            busy.add_metric([wid, name], running)
        yield from (slots, busy)


class WorkerMetrics:
    """One worker's metrics, all registered on ``registry`` (a private one by default)."""

    def __init__(self, worker_id: str, registry: CollectorRegistry | None = None) -> None:
        self.worker = worker_id
        self.registry = registry if registry is not None else CollectorRegistry()
        self.url: str | None = None
        self.server: WSGIServer | None = None
        reg, by_model = self.registry, ["worker", "model"]
        self.prompt_tokens = Counter("caravan_prompt_tokens", "Prompt tokens evaluated", by_model, registry=reg)
        self.predicted = Counter("caravan_tokens_predicted", "Tokens generated", by_model, registry=reg)
        self.itl = Histogram("caravan_inter_token_latency_seconds", "Time between token events of one request",
                             by_model, buckets=ITL_BUCKETS, registry=reg)
        self.requests = Counter("caravan_worker_requests", "Requests served, by done_reason or error",
                                [*by_model, "reason"], registry=reg)
        self.loads = Counter("caravan_model_loads", "Model loads by result", [*by_model, "result"], registry=reg)
        self.load_seconds = Histogram("caravan_model_load_seconds", "Duration of successful model loads",
                                      by_model, buckets=LOAD_BUCKETS, registry=reg)
        self.unloads = Counter("caravan_model_unloads", "Model unloads", by_model, registry=reg)
        self.state = StateCollector(worker_id)
        reg.register(self.state)
        ProcessCollector(registry=reg)

    def observe_state(self, state: WorkerState) -> None:
        """Hook: the heartbeat just published ``state``."""
        self.state.state = state

    @contextlib.contextmanager
    def loading(self, model: str) -> Iterator[None]:
        """Hook: wrap one model load; counts it by result and times it."""
        started, result = time.perf_counter(), "error"
        try:
            yield
            result = "ok"
            self.load_seconds.labels(self.worker, model).observe(time.perf_counter() - started)
        finally:
            self.loads.labels(self.worker, model, result).inc()

    def unloaded(self, model: str) -> None:
        """Hook: a model was unloaded."""
        self.unloads.labels(self.worker, model).inc()

    async def observe(self, model: str, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Hook: pass one request's engine events through, timing tokens and counting the final stats."""
        started = last = time.perf_counter()
        tokens = 0
        async for event in events:
            now = time.perf_counter()
            if event.t == "tok":
                if tokens:
                    self.itl.labels(self.worker, model).observe(now - last)
                tokens, last = tokens + 1, now
            elif event.t in ("done", "err"):
                self._finished(model, event, now - started)
            yield event

    def _finished(self, model: str, event: Event, seconds: float) -> None:
        stats = event.stats or {}
        prompt, predicted = int(stats.get("prompt_eval_count", 0)), int(stats.get("eval_count", 0))
        self.prompt_tokens.labels(self.worker, model).inc(prompt)
        self.predicted.labels(self.worker, model).inc(predicted)
        reason = (event.done_reason or "stop") if event.t == "done" else "error"
        self.requests.labels(self.worker, model, reason).inc()
        log.info("request served", extra={"model": model, "done_reason": reason, "prompt_tokens": prompt,
                                          "eval_tokens": predicted, "seconds": round(seconds, 4)})

    def serve(self, settings: WorkerSettings) -> str | None:
        """Start the ``/metrics`` server; returns (and keeps, for heartbeats) the URL others scrape.

        A port that cannot be bound is logged, not fatal: the worker still serves requests.
        """
        host = settings.metrics_host or route_address(settings.redis_url)
        try:
            self.server, _ = start_http_server(settings.metrics_port, addr=host, registry=self.registry)
        except OSError as exc:
            logging.getLogger("worker").error("metrics server failed to start", extra={
                "address": f"{host}:{settings.metrics_port}", "error": str(exc)})
            return None
        advertised = route_address(settings.redis_url) if host in ANY_ADDRESS else host
        self.url = f"http://{_bracket(advertised)}:{self.server.server_port}/metrics"
        return self.url

    def close(self) -> None:
        """Stop the ``/metrics`` server (the process exiting does it too: it is a daemon thread)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def route_address(redis_url: str) -> str:
    """This machine's address on the route to Redis: what the other cluster machines can reach.

    Connecting a UDP socket sends nothing; it only picks the outgoing interface. Loopback Redis → 127.0.0.1,
    a compose network → the container's address, a LAN Redis → the LAN address.
    """
    url = urlsplit(redis_url)
    if url.scheme == "unix" or not url.hostname:
        return "127.0.0.1"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(url.hostname, url.port or 6379,
                                                             type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.connect(address)
            return str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"
