"""The registry service's HTTP app: Ollama's model endpoints plus the internal API gateways and workers use.

    routes/models.py    GET|HEAD /api/tags, POST /api/show
    routes/internal.py  POST /internal/resolve, GET /internal/blobs/{digest}, GET /healthz
    routes/transfer.py  POST /api/pull, POST /api/push (arq jobs run by this process: registry/jobs.py)
    routes/distribution.py  /v2/: Caravan as a registry (manifests, blobs, uploads, tags, catalog)
"""

from __future__ import annotations

from fastapi import FastAPI

from caravan.asgi import install_error_handlers
from caravan.settings import RegistrySettings
from registry import jobs
from registry.metrics import install_metrics
from registry.notify import ModelNotifier
from registry.routes import create, distribution, internal, models, transfer
from registry.security import InternalTokenGuard
from registry.store import Store


def create_app(settings: RegistrySettings) -> FastAPI:
    app = FastAPI(title="caravan-registry", lifespan=jobs.lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.store = Store(settings.models)
    app.state.store.on_change = ModelNotifier(settings.redis_url)
    app.state.settings = settings
    install_error_handlers(app)
    if settings.internal_token:
        app.add_middleware(InternalTokenGuard, token=settings.internal_token)
    install_metrics(app, app.state.store)
    for module in (models, internal, create, transfer, distribution):
        app.include_router(module.router)
    return app
