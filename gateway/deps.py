"""FastAPI dependencies: the per-app services built in the lifespan, typed with ``Annotated``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.inference import InferenceService
from gateway.registry_client import RegistryClient


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def _registry(request: Request) -> RegistryClient:
    registry: RegistryClient = request.app.state.registry
    return registry


ServiceDep = Annotated[InferenceService, Depends(_service)]
RegistryDep = Annotated[RegistryClient, Depends(_registry)]
