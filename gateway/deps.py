"""FastAPI dependencies: the per-app services built in the lifespan, typed with ``Annotated``.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a hop to a thread
and back (~0.3-0.7 ms) on every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.inference import InferenceService
from gateway.metrics import GatewayMetrics
from gateway.registry_client import RegistryClient
from gateway.scheduler import Scheduler


def service_of(request: Request) -> InferenceService:
    """The app's inference service (also for the plain Starlette routes, which take no dependencies)."""
    service: InferenceService = request.app.state.service
    return service


async def _service(request: Request) -> InferenceService:
    return service_of(request)


async def _registry(request: Request) -> RegistryClient:
    registry: RegistryClient = request.app.state.registry
    return registry


async def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


async def _metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


ServiceDep = Annotated[InferenceService, Depends(_service)]
RegistryDep = Annotated[RegistryClient, Depends(_registry)]
SchedulerDep = Annotated[Scheduler, Depends(_scheduler)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
