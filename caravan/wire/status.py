"""Cluster status shapes: ``GET /api/status/cluster``, ``caravan status --json`` and Prometheus http_sd.

``GET /api/status/cluster`` (sizes in bytes, times RFC3339 UTC, absent fields omitted)::

    {
      "workers": [                                   every live worker (its heartbeat key exists)
        {"id": "gpu0-box", "host": "box", "device": "cuda", "memory_used": 123, "memory_budget": 456,
         "draining": false, "version": "0.1.0", "metrics_url": "http://10.0.0.5:9400/metrics",
         "loading": ["<spec>"],                      specs being loaded right now
         "models": [{"model": "smollm2:135m", "spec": "<spec>", "size": 123, "num_ctx": 4096,
                     "slots": 1, "in_flight": 0, "expires_at": "2025-01-01T00:05:00Z"}]}
      ],
      "models": [                                    every model with a queue or a loaded copy
        {"model": "smollm2:135m", "queued": 0, "in_flight": 0, "slots": 1, "workers": ["gpu0-box"]}
      ],
      "queued": 0, "in_flight": 0                    totals over models
    }

``queued`` counts requests waiting in a model's streams (``XLEN caravan:q:{spec}``: a worker deletes an
entry when it admits it); ``in_flight`` counts requests a worker is generating (from heartbeats).

``GET /api/status/prometheus-targets`` answers Prometheus' http_sd format: a list of
``{"targets": ["host:port"], "labels": {"worker": id, "device": ..., "__metrics_path__": path}}``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from caravan.queue import LoadedModelState, WorkerState


@dataclass(frozen=True)
class QueueDepth:
    """One request stream as Redis shows it: its spec key, its model (``""`` when unknown), its length."""

    spec: str
    model: str
    length: int


class LoadedModel(BaseModel):
    """One model loaded on one worker."""

    model: str = Field(description="model name as resolved, e.g. smollm2:135m")
    spec: str = Field(description="LoadSpec key: weights + load options; names the request queue")
    size: int = Field(description="bytes the loaded copy holds (estimate)")
    num_ctx: int = Field(description="context window it was loaded with")
    slots: int = Field(description="requests it can generate at once")
    in_flight: int = Field(description="requests it is generating now")
    expires_at: str | None = Field(None, description="RFC3339 UTC unload time; absent while busy or kept forever")


class WorkerStatus(BaseModel):
    """One live worker."""

    id: str
    host: str
    device: str
    memory_used: int
    memory_budget: int
    draining: bool = Field(description="finishing its requests before it stops; takes no new ones")
    version: str = ""
    metrics_url: str | None = None
    loading: list[str] = Field(default_factory=list, description="spec keys being loaded")
    models: list[LoadedModel] = Field(default_factory=list)


class ModelStatus(BaseModel):
    """One model across the cluster."""

    model: str
    queued: int = Field(description="requests waiting for a worker (not yet admitted)")
    in_flight: int = Field(description="requests being generated")
    slots: int = Field(description="slots over every worker holding the model")
    workers: list[str] = Field(default_factory=list, description="ids of the workers holding it")


class ClusterStatus(BaseModel):
    """``GET /api/status/cluster``."""

    workers: list[WorkerStatus] = Field(default_factory=list)
    models: list[ModelStatus] = Field(default_factory=list)
    queued: int = 0
    in_flight: int = 0

    def dump(self) -> dict[str, object]:
        """The JSON body (absent optional fields omitted)."""
        return self.model_dump(mode="json", exclude_none=True)


def rfc3339(epoch: float | None) -> str | None:
    """Unix seconds as RFC3339 UTC (``Z``), or None."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def loaded_model(state: LoadedModelState) -> LoadedModel:
    return LoadedModel(model=state.spec.model, spec=state.spec.key, size=state.size, num_ctx=state.spec.num_ctx,
                       slots=state.slots, in_flight=state.in_flight, expires_at=rfc3339(state.expires_at))


def worker_status(state: WorkerState) -> WorkerStatus:
    return WorkerStatus(id=state.id, host=state.host, device=state.device, memory_used=state.memory_used,
                        memory_budget=state.memory_budget, draining=state.draining, version=state.version,
                        metrics_url=state.metrics_url, loading=list(state.loading),
                        models=[loaded_model(m) for m in state.models])


def _model_rows(workers: list[WorkerStatus], queues: Iterable[QueueDepth]) -> list[ModelStatus]:
    rows: dict[str, ModelStatus] = {}

    def row(name: str) -> ModelStatus:
        return rows.setdefault(name, ModelStatus(model=name, queued=0, in_flight=0, slots=0))

    for worker in workers:
        for model in worker.models:
            entry = row(model.model)
            entry.in_flight += model.in_flight
            entry.slots += model.slots
            if worker.id not in entry.workers:
                entry.workers.append(worker.id)
    for queue in queues:
        if queue.model or queue.length:
            row(queue.model or queue.spec).queued += queue.length
    return sorted(rows.values(), key=lambda m: m.model)


def build_status(workers: Iterable[WorkerState], queues: Iterable[QueueDepth]) -> ClusterStatus:
    """The cluster from heartbeats and queue depths."""
    views = sorted((worker_status(w) for w in workers), key=lambda w: w.id)
    models = _model_rows(views, queues)
    return ClusterStatus(workers=views, models=models, queued=sum(m.queued for m in models),
                         in_flight=sum(m.in_flight for m in models))


def prometheus_targets(workers: Iterable[WorkerState]) -> list[dict[str, object]]:
    """Prometheus http_sd target groups: one per worker that advertises a metrics URL."""
    groups: list[dict[str, object]] = []
    for worker in sorted(workers, key=lambda w: w.id):
        if not worker.metrics_url:
            continue
        url = urlsplit(worker.metrics_url)
        labels = {"worker": worker.id, "device": worker.device, "__scheme__": url.scheme or "http",
                  "__metrics_path__": url.path or "/metrics"}
        groups.append({"targets": [url.netloc], "labels": labels})
    return groups
