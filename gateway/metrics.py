"""Every Prometheus metric the gateway exports, declared here against an injectable ``CollectorRegistry``.

Names follow what people already graph: llama.cpp's ``requests_processing`` / ``requests_deferred`` and vLLM's
latency histograms, under one ``caravan_`` prefix. Labels stay low-cardinality: ``model`` is the resolved
model name (a request for an unknown model counts with ``model=""``), ``endpoint`` the route template,
``status`` the HTTP status; never request ids, prompts or API keys.

    caravan_requests_total{endpoint,model,status}            counter    every HTTP request (access middleware)
    caravan_requests_processing{model}                      gauge      this gateway's requests a worker is running
    caravan_requests_deferred{model}                        gauge      this gateway's requests waiting for a worker
    caravan_request_queue_time_seconds{model}               histogram  enqueue → a worker admits it (incl. cold load)
    caravan_time_to_first_token_seconds{model}              histogram  request arrival → first token relayed
    caravan_e2e_request_latency_seconds{model}              histogram  request arrival → final event
    caravan_queue_depth{model}                              gauge      XLEN of the model's streams, read at scrape time
    caravan_cluster_requests_in_flight{model}               gauge      requests generating, from worker heartbeats
    caravan_cluster_slots{model}                            gauge      slots over the workers holding the model
    caravan_cluster_workers{state}                          gauge      live workers (ready / draining)
    caravan_redis_up                                        gauge      1 when the last cluster read succeeded
    process_*                                               the gateway process (CPU, memory, fds)

Hooks in the request path are one-liners: ``metrics.request(model)`` returns a ``RequestObserver`` that the
reply reader feeds with every event.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from caravan.queue import Event
from caravan.wire.status import ClusterStatus

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
E2E_BUCKETS = (0.1, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass
class RequestLabels:
    """What the access middleware learns about a request while the handler runs (mutable on purpose)."""

    model: str = ""


current_request: contextvars.ContextVar[RequestLabels | None] = contextvars.ContextVar("request_labels",
                                                                                         default=None)


def note_model(model: str) -> None:
    """Label the current HTTP request with its (resolved) model."""
    labels = current_request.get()
    if labels is not None:
        labels.model = model


class ClusterCollector(Collector):
    """Queue depth and heartbeat gauges from the last cluster snapshot (refreshed by each scrape)."""

    def __init__(self) -> None:
        self.snapshot: ClusterStatus | None = None
        self.redis_up = 0

    def update(self, snapshot: ClusterStatus | None) -> None:
        self.snapshot, self.redis_up = snapshot, int(snapshot is not None)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("caravan_redis_up", "1 when the gateway's last read of the cluster state succeeded",
                                value=self.redis_up)
        snapshot = self.snapshot
        if snapshot is None:
            return
        depth = GaugeMetricFamily("caravan_queue_depth", "Requests waiting in the model's queues (XLEN)",
                                  labels=["model"])
        running = GaugeMetricFamily("caravan_cluster_requests_in_flight",
                                    "Requests being generated, from worker heartbeats", labels=["model"])
        slots = GaugeMetricFamily("caravan_cluster_slots", "Slots over the workers holding the model",
                                  labels=["model"])
        for model in snapshot.models:
            depth.add_metric([model.model], model.queued)
            running.add_metric([model.model], model.in_flight)
            slots.add_metric([model.model], model.slots)
        workers = GaugeMetricFamily("caravan_cluster_workers", "Live workers", labels=["state"])
        draining = sum(w.draining for w in snapshot.workers)
        workers.add_metric(["ready"], len(snapshot.workers) - draining)
        workers.add_metric(["draining"], draining)
        yield from (depth, running, slots, workers)


class GatewayMetrics:
    """The gateway's metrics, all registered on ``registry`` (a private one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.requests = Counter("caravan_requests", "HTTP requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=reg)
        self.processing = Gauge("caravan_requests_processing", "Requests of this gateway a worker is running",
                                ["model"], registry=reg)
        self.deferred = Gauge("caravan_requests_deferred", "Requests of this gateway waiting for a worker",
                              ["model"], registry=reg)
        self.queue_time = Histogram("caravan_request_queue_time_seconds", "Enqueue until a worker admits the request",
                                    ["model"], buckets=QUEUE_BUCKETS, registry=reg)
        self.ttft = Histogram("caravan_time_to_first_token_seconds", "Request arrival until the first token",
                              ["model"], buckets=TTFT_BUCKETS, registry=reg)
        self.e2e = Histogram("caravan_e2e_request_latency_seconds", "Request arrival until the final event",
                             ["model"], buckets=E2E_BUCKETS, registry=reg)
        self.cluster = ClusterCollector()
        reg.register(self.cluster)
        ProcessCollector(registry=reg)

    def request(self, model: str, started: float | None = None) -> RequestObserver:
        """Track one submitted inference request; ``started`` is its arrival (``time.perf_counter``)."""
        note_model(model)
        return RequestObserver(self, model, started)

    def count_request(self, endpoint: str, model: str, status: int) -> None:
        self.requests.labels(endpoint, model, str(status)).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text or OpenMetrics, by ``Accept``) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class RequestObserver:
    """One request's life as its reply events arrive: deferred → processing → done, with latencies."""

    def __init__(self, metrics: GatewayMetrics, model: str, started: float | None) -> None:
        self.metrics = metrics
        self.model = model
        self.submitted = time.perf_counter()
        self.started = started if started is not None else self.submitted
        self.state = "deferred"
        self.first_token = False
        metrics.deferred.labels(model).inc()

    def event(self, event: Event) -> None:
        """Feed every reply event (start, tok, done, err) in order."""
        now = time.perf_counter()
        if event.t == "start" and self.state == "deferred":
            self.metrics.queue_time.labels(self.model).observe(now - self.submitted)
            self._move("processing")
        elif event.t == "tok" and not self.first_token:
            self.first_token = True
            self.metrics.ttft.labels(self.model).observe(now - self.started)
        elif event.t in ("done", "err"):
            if event.t == "done" and event.done_reason not in ("load", "unload"):
                self.metrics.e2e.labels(self.model).observe(now - self.started)
            self._move("finished")

    def close(self) -> None:
        """The request ended (finished, failed or abandoned): leave the gauges balanced."""
        self._move("finished")

    def _move(self, state: str) -> None:
        gauges = {"deferred": self.metrics.deferred, "processing": self.metrics.processing}
        if state == self.state or self.state == "finished":
            return
        gauges[self.state].labels(self.model).dec()
        if state in gauges:
            gauges[state].labels(self.model).inc()
        self.state = state
