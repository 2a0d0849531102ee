"""``POST /api/pull`` and ``POST /api/push``: answered by the registry service (its arq transfer jobs); the
gateway relays the NDJSON progress stream as it arrives."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import RegistryDep

router = APIRouter()


@router.post("/api/pull")
async def pull(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)


@router.post("/api/push")
async def push(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)
