"""``POST /api/pull`` and ``POST /api/push`` (ollama-api.md §3.15): start (or join) the model's transfer job
and relay its progress stream as NDJSON; ``stream: false`` answers with the last object, or
``500 {"error": ...}``. The job keeps running when the client goes away.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from caravan.asgi import parse_body
from caravan.errors import BadRequest, CaravanError, ServerBusy
from caravan.names import ModelName
from caravan.wire.transfer import TransferRequest
from registry.jobs import Event, TransferService

router = APIRouter()


async def _transfers(request: Request) -> TransferService:
    service: TransferService | None = getattr(request.app.state, "transfers", None)
    if service is None:
        raise ServerBusy("pull and push need Redis, which this registry could not reach")
    return service


TransfersDep = Annotated[TransferService, Depends(_transfers)]


def target(body: TransferRequest) -> ModelName:
    """The model a transfer request names (``invalid model name`` as Ollama words it)."""
    if body.target.startswith("http://") and not body.insecure:
        raise BadRequest("insecure protocol http")
    try:
        return ModelName.parse(body.target)
    except CaravanError:
        raise BadRequest("invalid model name") from None


async def _ndjson(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for event, _ in events:
        yield json.dumps(event).encode() + b"\n"


async def _transfer(kind: str, request: Request, service: TransferService) -> Response:
    """Start or join the job; NDJSON progress, or the final object (an error as a 500 with its message)."""
    body = parse_body(await request.body(), TransferRequest)
    name = target(body)
    run = await service.start(kind, name, insecure=body.insecure)
    if body.streaming:
        return StreamingResponse(_ndjson(service.follow(kind, name, run)), media_type="application/x-ndjson")
    event, _ = await service.outcome(kind, name, run)
    if event.get("error"):
        return JSONResponse({"error": event["error"]}, status_code=500)
    return JSONResponse(event)


@router.post("/api/pull")
async def pull(request: Request, service: TransfersDep) -> Response:
    return await _transfer("pull", request, service)


@router.post("/api/push")
async def push(request: Request, service: TransfersDep) -> Response:
    return await _transfer("push", request, service)
