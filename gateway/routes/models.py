"""Model endpoints, answered by the registry service: the gateway proxies them unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import RegistryDep

router = APIRouter()


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)


@router.post("/api/show")
async def show(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)
