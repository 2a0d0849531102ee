"""Ollama's model endpoints (ollama-api.md §3.9–§3.14): tags, show, copy, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from caravan.asgi import parse_body
from caravan.errors import BadRequest
from caravan.wire.ollama import ShowRequest
from registry.create import CopyRequest, DeleteRequest, copy_model
from registry.deps import StoreDep, view_of
from registry.gc import delete_model
from registry.models import ModelView

router = APIRouter()


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(store: StoreDep) -> dict[str, Any]:
    return {"models": [ModelView(store, item).tags_entry() for item in store.list_manifests()]}


@router.post("/api/show")
async def show(request: Request, store: StoreDep) -> dict[str, Any]:
    body = parse_body(await request.body(), ShowRequest)
    name = body.model or body.name
    if not name:
        raise BadRequest("model is required")
    return view_of(store, name).show(verbose=body.verbose, system=body.system)


@router.post("/api/copy")
async def copy(request: Request, store: StoreDep) -> Response:
    body = parse_body(await request.body(), CopyRequest)
    await run_in_threadpool(copy_model, store, body.source, body.destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request, store: StoreDep) -> Response:
    body = parse_body(await request.body(), DeleteRequest)
    await run_in_threadpool(delete_model, store, body.model or body.name)
    return Response(status_code=200)
