"""Ollama's model endpoints (ollama-api.md §3.9–§3.14): tags, show."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from caravan.asgi import parse_body
from caravan.errors import BadRequest
from caravan.wire.ollama import ShowRequest
from registry.deps import StoreDep, view_of
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
