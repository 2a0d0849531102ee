"""POST /api/embed and the legacy /api/embeddings (ollama-api.md §3.7, §3.8)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from caravan.asgi import parse_body
from caravan.errors import BadRequest
from caravan.wire.ollama import EmbeddingsRequest, EmbeddingsResponse, EmbedRequest, EmbedResponse, dump
from gateway.deps import ServiceDep
from gateway.embedding import run_embed, shaped_vector

router = APIRouter()


@router.post("/api/embed")
async def embed(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), EmbedRequest)
    if not body.model:
        raise BadRequest("model is required")
    inputs = body.inputs
    result = await run_embed(service, request, body.model, inputs, truncate=body.truncate is not False,
                             options=body.options, keep_alive=body.keep_alive)
    if not inputs:
        return JSONResponse({"model": body.model, "embeddings": []})
    return JSONResponse(dump(EmbedResponse(
        model=body.model, embeddings=[shaped_vector(v, body.dimensions) for v in result.vectors],
        total_duration=result.total_duration, load_duration=result.load_duration,
        prompt_eval_count=result.prompt_eval_count,
    )))


@router.post("/api/embeddings")
async def embeddings(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), EmbeddingsRequest)
    if not body.model:
        raise BadRequest("model is required")
    inputs = [body.prompt] if body.prompt else []
    result = await run_embed(service, request, body.model, inputs, options=body.options, keep_alive=body.keep_alive)
    return JSONResponse(dump(EmbeddingsResponse(embedding=result.vectors[0] if result.vectors else [])))
