"""POST /api/generate and /api/chat (ollama-api.md §3.2, §3.3)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from caravan.asgi import parse_body
from caravan.wire.ollama import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse, dump
from gateway.deps import ServiceDep
from gateway.shaping import chat_shaper, generate_shaper

router = APIRouter()


@router.post("/api/generate")
async def generate(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), GenerateRequest)
    prepared = await service.prepare_generate(body, request.headers.get("x-request-id"))
    if prepared.job.op == "load" and prepared.keep_alive == 0:
        await service.unload(prepared)
        return JSONResponse(dump(GenerateResponse(model=body.model, done=True, done_reason="unload")))
    return await service.run(request, prepared, body.stream is not False, generate_shaper)


@router.post("/api/chat")
async def chat(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), ChatRequest)
    prepared = await service.prepare_chat(body, request.headers.get("x-request-id"))
    if prepared.job.op == "load" and prepared.keep_alive == 0:
        await service.unload(prepared)
        return JSONResponse(dump(ChatResponse(model=body.model, done=True, done_reason="unload")))
    return await service.run(request, prepared, body.stream is not False, chat_shaper)
