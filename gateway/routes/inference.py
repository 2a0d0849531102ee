"""POST /api/generate and /api/chat (ollama-api.md §3.2, §3.3).

The two busiest endpoints are plain Starlette routes, added to the app's own router (``create_app``): FastAPI's
per-route layer (dependency solving, endpoint wrapping) cost ≈ 0.25 ms of each request's time to first token
here, and they need none of it — the body is parsed strictly by ``parse_body``, errors are mapped by the app's
handlers like every other route's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from caravan.asgi import parse_body
from caravan.wire.ollama import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse, dump
from gateway.access import PlainRoute
from gateway.deps import service_of
from gateway.shaping import chat_shaper, generate_shaper


async def generate(request: Request) -> Response:
    service = service_of(request)
    body = parse_body(await request.body(), GenerateRequest)
    prepared = await service.prepare_generate(body, request.headers.get("x-request-id"))
    if prepared.job.op == "load" and prepared.keep_alive == 0:
        await service.unload(prepared)
        return JSONResponse(dump(GenerateResponse(model=body.model, done=True, done_reason="unload")))
    return await service.run(request, prepared, body.stream is not False, generate_shaper)


async def chat(request: Request) -> Response:
    service = service_of(request)
    body = parse_body(await request.body(), ChatRequest)
    prepared = await service.prepare_chat(body, request.headers.get("x-request-id"))
    if prepared.job.op == "load" and prepared.keep_alive == 0:
        await service.unload(prepared)
        return JSONResponse(dump(ChatResponse(model=body.model, done=True, done_reason="unload")))
    return await service.run(request, prepared, body.stream is not False, chat_shaper)


routes = [PlainRoute("/api/generate", generate, methods=["POST"]), PlainRoute("/api/chat", chat, methods=["POST"])]
