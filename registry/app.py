"""The registry service's HTTP app: Ollama's model endpoints plus the internal API gateways and workers use.

    routes/models.py    GET|HEAD /api/tags, POST /api/show
    routes/internal.py  POST /internal/resolve, GET /internal/blobs/{digest}, GET /healthz
"""

from __future__ import annotations

from fastapi import FastAPI

from caravan.asgi import install_error_handlers
from caravan.settings import RegistrySettings
from registry.routes import create, distribution, internal, models, transfer
from registry.store import Store


def create_app(settings: RegistrySettings) -> FastAPI:
    app = FastAPI(title="caravan-registry", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = Store(settings.models)
    app.state.settings = settings
    install_error_handlers(app)
    for module in (models, internal, create, transfer, distribution):
        app.include_router(module.router)
    return app
