"""Every Prometheus metric the registry exports, declared here against an injectable ``CollectorRegistry``,
and its ``GET /metrics`` route.

    caravan_registry_store_bytes                 gauge      bytes in complete blobs, read at scrape time
    caravan_registry_blobs                       gauge      complete blobs in the store
    caravan_registry_models                      gauge      models (manifests) in the store
    caravan_registry_pulls_total{result}         counter    finished pulls: ``success`` or ``error``
    caravan_registry_pull_bytes_total            counter    bytes downloaded by pulls
    caravan_registry_pull_seconds                histogram  duration of successful pulls
    process_*                                    the registry process (CPU, memory, fds)

No model label on pulls: a pull names a model that may not exist, and labels must stay bounded.
Pull code reports through ``request.app.state.metrics`` (or the object handed to its job):
``metrics.pulled_bytes(n)`` as bytes land, ``with metrics.pulling(): ...`` around a whole pull.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from registry.store import Store

PULL_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0, 3600.0, 7200.0)
_BLOB = re.compile(r"^sha256-[0-9a-f]{64}$")
router = APIRouter()


class StoreCollector(Collector):
    """Store size, blob and model counts, scanned when Prometheus scrapes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        size = count = 0
        with os.scandir(self.store.blobs) as entries:
            for entry in entries:
                if _BLOB.match(entry.name) and entry.is_file():
                    size, count = size + entry.stat().st_size, count + 1
        yield GaugeMetricFamily("caravan_registry_store_bytes", "Bytes in complete blobs", value=size)
        yield GaugeMetricFamily("caravan_registry_blobs", "Complete blobs in the store", value=count)
        yield GaugeMetricFamily("caravan_registry_models", "Models (manifests) in the store",
                                value=len(self.store.list_names()))


class RegistryMetrics:
    """The registry's metrics, all registered on ``registry`` (a private one by default)."""

    def __init__(self, store: Store, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.pulls = Counter("caravan_registry_pulls", "Finished pulls by result", ["result"], registry=reg)
        self.pull_bytes = Counter("caravan_registry_pull_bytes", "Bytes downloaded by pulls", registry=reg)
        self.pull_seconds = Histogram("caravan_registry_pull_seconds", "Duration of successful pulls",
                                      buckets=PULL_BUCKETS, registry=reg)
        reg.register(StoreCollector(store))
        ProcessCollector(registry=reg)

    def pulled_bytes(self, count: int) -> None:
        """Hook: ``count`` more bytes arrived for a pull."""
        self.pull_bytes.inc(count)

    @contextlib.contextmanager
    def pulling(self) -> Iterator[None]:
        """Hook: wrap one whole pull; counts it by result and times the successful ones."""
        started, result = time.perf_counter(), "error"
        try:
            yield
            result = "success"
            self.pull_seconds.observe(time.perf_counter() - started)
        finally:
            self.pulls.labels(result).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text or OpenMetrics, by ``Accept``) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    metrics: RegistryMetrics = request.app.state.metrics
    body, content_type = await anyio.to_thread.run_sync(metrics.render, request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


def install_metrics(app: FastAPI, store: Store, registry: CollectorRegistry | None = None) -> RegistryMetrics:
    """Create the registry's metrics (``app.state.metrics``) and serve them at ``GET /metrics``."""
    app.state.metrics = RegistryMetrics(store, registry)
    app.include_router(router)
    metrics: RegistryMetrics = app.state.metrics
    return metrics
