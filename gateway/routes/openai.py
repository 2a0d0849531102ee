"""The OpenAI-compatible endpoints under /v1 (ollama-api.md §4); every error in OpenAI's envelope."""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from caravan.asgi import parse_body
from caravan.errors import BadRequest, CaravanError, NotFound, ServerBusy, UpstreamError
from caravan.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    error_envelope,
    model_object,
)
from gateway.deps import RegistryDep, ServiceDep
from gateway.embedding import run_embed, shaped_vector
from gateway.openai_layer import chat_request, generate_request
from gateway.openai_relay import ChatChunks, CompletionChunks, relay
from gateway.registry_client import RegistryClient
from gateway.shaping import chat_shaper, generate_shaper

log = logging.getLogger(__name__)


class OpenAIRoute(APIRoute):
    """Errors of these routes become ``{"error": {"message", "type", "param", "code"}}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except CaravanError as exc:
                return JSONResponse(error_envelope(exc), status_code=exc.status)
            except RedisError as exc:
                busy = ServerBusy(f"the cluster queue (Redis) is unavailable: {exc}")
                return JSONResponse(error_envelope(busy), status_code=busy.status)

        return route


router = APIRouter(route_class=OpenAIRoute)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), ChatCompletionRequest)
    prepared = await service.prepare_chat(chat_request(body), request.headers.get("x-request-id"))
    return await relay(service, request, prepared, chat_shaper, ChatChunks(body.model, body.include_usage),
                       body.stream)


@router.post("/v1/completions")
async def completions(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), CompletionRequest)
    prepared = await service.prepare_generate(generate_request(body), request.headers.get("x-request-id"))
    return await relay(service, request, prepared, generate_shaper,
                       CompletionChunks(body.model, body.include_usage), body.stream)


@router.post("/v1/embeddings")
async def embeddings(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), EmbeddingRequest)
    inputs = embedding_inputs(body.input)
    encoding = body.encoding_format or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].")
    result = await run_embed(service, request, body.model, inputs)
    vectors = [shaped_vector(vector, body.dimensions) for vector in result.vectors]
    data = [{"object": "embedding", "embedding": encode_vector(v, encoding), "index": i} for i, v in enumerate(vectors)]
    tokens = result.prompt_eval_count
    return JSONResponse({"object": "list", "data": data, "model": body.model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> Response:
    tags = await registry_json(registry, "GET", "/api/tags")
    data = [model_object(m["name"], epoch(m.get("modified_at"))) for m in tags.get("models") or []]
    return JSONResponse({"object": "list", "data": data or None})


@router.get("/v1/models/{model}")
async def retrieve_model(model: str, registry: RegistryDep) -> Response:
    shown = await registry_json(registry, "POST", "/api/show", {"model": model})
    return JSONResponse(model_object(model, epoch(shown.get("modified_at"))))


def embedding_inputs(value: Any) -> list[str]:
    """``""`` is one empty input; ``[]``, null and token arrays are not supported."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest("invalid input")


def encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def epoch(stamp: Any) -> int:
    try:
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


async def registry_json(registry: RegistryClient, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A registry endpoint's JSON; 404 → OpenAI's ``model 'X' not found``."""
    try:
        response = await registry.http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"registry unavailable: {exc}") from None
    if response.status_code == 404:
        raise NotFound(f"model '{(body or {}).get('model', '')}' not found")
    if response.status_code != 200:
        raise CaravanError(str(response.json().get("error", response.text)), status=response.status_code)
    result: dict[str, Any] = response.json()
    return result
