"""Model endpoints, answered by the registry service: the gateway proxies them unchanged.

Bodies stream both ways (``RegistryClient.proxy``): a blob upload is never buffered here, and create's NDJSON
progress reaches the client line by line.
"""

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


@router.post("/api/create")
async def create(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)


@router.api_route("/api/blobs/{digest}", methods=["HEAD", "POST"])
async def blobs(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)


@router.post("/api/copy")
async def copy(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)


@router.delete("/api/delete")
async def delete(request: Request, registry: RegistryDep) -> Response:
    return await registry.proxy(request)
