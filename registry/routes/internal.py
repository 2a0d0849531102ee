"""The internal API gateways and workers use: resolve a name to a ModelRecord, fetch a blob by digest."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from caravan.asgi import parse_body
from caravan.errors import NotFound
from caravan.names import parse_digest
from caravan.wire.registry import ResolveRequest
from registry.deps import StoreDep, view_of

router = APIRouter()


@router.post("/internal/resolve")
async def resolve(request: Request, store: StoreDep) -> JSONResponse:
    body = parse_body(await request.body(), ResolveRequest)
    return JSONResponse(view_of(store, body.model).record().model_dump())


@router.get("/internal/blobs/{digest}")
async def blob(digest: str, store: StoreDep) -> Response:
    path = store.blob_path(parse_digest(digest))
    if not path.is_file():
        raise NotFound(f"blob {digest} not found")
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
