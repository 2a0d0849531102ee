"""The registry service's HTTP app: Ollama's model endpoints plus the internal API gateways and workers use.

    GET|HEAD /api/tags            models, newest first
    POST     /api/show            details, modelfile, model_info, capabilities
    POST     /internal/resolve    ModelRecord for routing a request
    GET      /internal/blobs/{d}  a blob by digest (workers on other machines fetch weights here)
    GET      /healthz
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from caravan.asgi import install_error_handlers, parse_body
from caravan.errors import BadRequest, NotFound
from caravan.names import ModelName, parse_digest
from caravan.settings import RegistrySettings
from caravan.wire.ollama import ShowRequest
from caravan.wire.registry import ResolveRequest
from registry.models import ModelView
from registry.store import Store


def _view(store: Store, raw_name: str) -> ModelView:
    try:
        name = ModelName.parse(raw_name)
    except BadRequest:
        raise NotFound(f"model '{raw_name}' not found") from None
    return ModelView(store, store.read_manifest(name))


def create_app(settings: RegistrySettings) -> FastAPI:
    store = Store(settings.models)
    app = FastAPI(title="caravan-registry", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    install_error_handlers(app)

    @app.api_route("/api/tags", methods=["GET", "HEAD"])
    async def tags() -> dict[str, Any]:
        return {"models": [ModelView(store, item).tags_entry() for item in store.list_manifests()]}

    @app.post("/api/show")
    async def show(request: Request) -> dict[str, Any]:
        body = parse_body(await request.body(), ShowRequest)
        name = body.model or body.name
        if not name:
            raise BadRequest("model is required")
        return _view(store, name).show(verbose=body.verbose, system=body.system)

    @app.post("/internal/resolve")
    async def resolve(request: Request) -> JSONResponse:
        body = parse_body(await request.body(), ResolveRequest)
        return JSONResponse(_view(store, body.model).record().model_dump())

    @app.get("/internal/blobs/{digest}")
    async def blob(digest: str) -> Response:
        path = store.blob_path(parse_digest(digest))
        if not path.is_file():
            raise NotFound(f"blob {digest} not found")
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
