"""The gateway app: Ollama's API on :11434, queued through Redis to workers; model calls go to the registry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import RedisSettings, create_pool
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from caravan.asgi import install_error_handlers
from caravan.settings import GatewaySettings
from gateway import security
from gateway.access import AccessMiddleware
from gateway.inference import InferenceService
from gateway.metrics import GatewayMetrics
from gateway.registry_client import RegistryClient
from gateway.routes import embed, inference, meta, models, openai, ps, status, transfer
from gateway.scheduler import Scheduler


def connect(url: str) -> Redis:
    return Redis.from_url(url, socket_timeout=15, socket_connect_timeout=3, health_check_interval=30,
                          socket_keepalive=True, max_connections=2048)


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": f"the cluster queue (Redis) is unavailable: {exc}"}, status_code=503)


def create_app(settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> FastAPI:
    app_metrics = metrics or GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect(settings.redis_url)
        arq = await create_pool(RedisSettings.from_dsn(settings.redis_url))
        registry = RegistryClient(settings.registry_url, settings.internal_token)
        scheduler = Scheduler(settings, redis, arq)
        app.state.registry = registry
        app.state.scheduler = scheduler
        app.state.service = InferenceService(settings, redis, scheduler, registry, app_metrics)
        watcher = asyncio.create_task(registry.watch(redis))
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await registry.aclose()
        await arq.aclose()
        await redis.aclose()

    app = FastAPI(title="caravan-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.state.metrics = app_metrics
    security.install(app, settings, app_metrics.registry)  # guard, Host guard, CORS; /api/keys, /api/usage
    app.add_middleware(AccessMiddleware, metrics=app_metrics)
    app.add_exception_handler(RedisError, _redis_down)
    app.router.routes.extend(inference.routes)  # plain Starlette routes: the busiest path skips FastAPI's layer
    for module in (meta, models, embed, openai, transfer, status, ps):
        app.include_router(module.router)
    return app
