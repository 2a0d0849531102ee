"""Status and observability: ``/api/status`` (Ollama's stub), ``/api/status/cluster``, Prometheus targets, ``/metrics``.

    GET|HEAD /api/status                       {"cloud":{"disabled":true,"source":"none"}}  (Ollama clients ask)
    GET      /api/status/cluster               caravan.wire.status.ClusterStatus
    GET      /api/status/prometheus-targets    Prometheus http_sd target groups, one per worker (from heartbeats)
    GET      /metrics                          the gateway's metrics; queue depth read from Redis at scrape time
"""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError

from caravan.wire.status import ClusterStatus, prometheus_targets
from gateway.cluster_state import read_cluster
from gateway.deps import MetricsDep, SchedulerDep
from gateway.scheduler import Scheduler

router = APIRouter()
log = logging.getLogger(__name__)
CLOUD_STATUS: dict[str, object] = {"cloud": {"disabled": True, "source": "none"}}


@router.api_route("/api/status", methods=["GET", "HEAD"])
async def cloud_status() -> dict[str, object]:
    return CLOUD_STATUS


@router.get("/api/status/cluster")
async def cluster_status(scheduler: SchedulerDep) -> JSONResponse:
    status = await read_cluster(scheduler.redis, await scheduler.workers())
    return JSONResponse(status.dump())


@router.get("/api/status/prometheus-targets")
async def prometheus_sd(scheduler: SchedulerDep) -> JSONResponse:
    return JSONResponse(prometheus_targets(await scheduler.workers()))


async def _snapshot(scheduler: Scheduler) -> ClusterStatus | None:
    try:
        return await read_cluster(scheduler.redis, await scheduler.workers())
    except (RedisError, OSError) as exc:
        log.warning("cluster state unavailable for /metrics", extra={"error": str(exc)})
        return None


@router.get("/metrics")
async def metrics_endpoint(request: Request, scheduler: SchedulerDep, metrics: MetricsDep) -> Response:
    metrics.cluster.update(await _snapshot(scheduler))
    body, content_type = await anyio.to_thread.run_sync(metrics.render, request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})
