"""POST /api/generate and /api/chat (ollama-api.md §3.2, §3.3)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from caravan.asgi import parse_body
from caravan.errors import BadRequest, NotFound
from caravan.wire.ollama import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse, dump
from gateway.deps import ServiceDep
from gateway.inference import chat_shaper, generate_shaper

router = APIRouter()


@router.post("/api/generate")
async def generate(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), GenerateRequest)
    if not body.model:
        raise NotFound("model '' not found")
    if body.raw and (body.template or body.system or body.context):
        raise BadRequest("raw mode does not support template, system, or context")
    load_only = not body.prompt and not body.suffix
    prepared = await service.prepare(body, "load" if load_only else "generate",
                                     request.headers.get("x-request-id"), prompt=body.prompt,
                                     suffix=body.suffix, raw=body.raw, context=body.context)
    record, job = prepared.record, prepared.job
    job.system = body.system if body.system is not None else record.system
    job.template = body.template or record.template
    job.messages = [] if body.context else record.messages
    if load_only and prepared.keep_alive == 0:
        await service.unload(prepared)
        return JSONResponse(dump(GenerateResponse(model=body.model, done=True, done_reason="unload")))
    return await service.run(request, prepared, body.stream is not False, generate_shaper)


@router.post("/api/chat")
async def chat(request: Request, service: ServiceDep) -> Response:
    body = parse_body(await request.body(), ChatRequest)
    if not body.model:
        raise BadRequest("model is required")
    load_only = not body.messages
    prepared = await service.prepare(body, "load" if load_only else "chat", request.headers.get("x-request-id"),
                                     tools=body.tools)
    record, job = prepared.record, prepared.job
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    prepared.conversation = messages.copy()
    if record.system and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": record.system})
    job.messages = record.messages + messages
    job.template = record.template
    if load_only and prepared.keep_alive == 0:
        await service.unload(prepared)
        return JSONResponse(dump(ChatResponse(model=body.model, done=True, done_reason="unload")))
    return await service.run(request, prepared, body.stream is not False, chat_shaper)
