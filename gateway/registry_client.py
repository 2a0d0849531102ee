"""The gateway's view of the registry service: resolve names to ModelRecords, and proxy model endpoints."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from caravan import keys
from caravan.errors import NotFound, UpstreamError, from_wire
from caravan.registry_auth import INTERNAL_HEADER, internal_headers
from caravan.wire.registry import ModelRecord

HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "host",
               INTERNAL_HEADER.lower()}


log = logging.getLogger(__name__)
CHANGES_MODELS = frozenset({"/api/create", "/api/copy", "/api/delete", "/api/pull"})
RECORD_TTL = 2.0  # seconds a resolved record is reused while the gateway does not hear the registry's changes
WATCHED_RECORD_TTL = 300.0  # ... and while it does (``caravan:models``; a missed message costs at most this)


class RegistryClient:
    """HTTP client for the registry service, with a short-lived cache of resolved records.

    Resolving costs an HTTP round trip to the registry (2-3 ms with both sides' CPU) on every inference
    request, so records are cached: forgotten as soon as a create/copy/delete/pull passes through this gateway,
    and whenever the registry announces a change on ``caravan:models`` (``registry.notify``), which
    :meth:`watch` listens to. While it listens a record lives ``WATCHED_RECORD_TTL``, else ``RECORD_TTL``.
    """

    def __init__(self, base_url: str, token: str = "") -> None:
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=httpx.Timeout(30, read=None),
                                      headers=internal_headers(token))
        self._records: dict[str, tuple[float, ModelRecord]] = {}
        self.watching = False

    async def resolve(self, model: str) -> ModelRecord:
        """The record of ``model``; Ollama's ``model 'X' not found`` when unknown."""
        cached = self._records.get(model)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        record = await self._resolve(model)
        ttl = WATCHED_RECORD_TTL if self.watching else RECORD_TTL
        self._records[model] = (time.monotonic() + ttl, record)
        return record

    async def watch(self, redis: Redis) -> None:
        """Drop cached records whenever the registry's models change (runs for the gateway's lifetime)."""
        while True:
            try:
                async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.MODELS_CHANNEL)
                    self._records.clear()  # whatever changed while nobody listened
                    self.watching = True
                    async for _ in pubsub.listen():
                        self._records.clear()
            except (RedisError, OSError) as exc:
                log.debug("model change feed lost; retrying", extra={"error": str(exc)})
            finally:
                self.watching = False
                self._records.clear()
            await asyncio.sleep(0.5)

    async def _resolve(self, model: str) -> ModelRecord:
        try:
            response = await self.http.post("/internal/resolve", json={"model": model})
        except httpx.HTTPError as exc:
            raise UpstreamError(f"registry unavailable: {exc}") from None
        if response.status_code == 404:
            raise NotFound(f"model '{model}' not found")
        if response.status_code != 200:
            raise from_wire({"status": response.status_code, **response.json()})
        return ModelRecord.model_validate_json(response.content)

    async def proxy(self, request: Request, path: str | None = None) -> Response:
        """Forward ``request`` to the registry and stream its answer back unchanged."""
        if request.url.path in CHANGES_MODELS:
            self._records.clear()  # a model may change: resolve afresh
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = self.http.build_request(
            request.method, path or request.url.path, params=request.query_params,
            headers=headers, content=request.stream(),
        )
        try:
            response = await self.http.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"registry unavailable: {exc}") from None
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(
            response.aiter_raw(), status_code=response.status_code, headers=out_headers,
            background=BackgroundTask(response.aclose),
        )

    async def aclose(self) -> None:
        await self.http.aclose()
