"""Model creation endpoints (ollama-api.md §3.12, §3.13): ``POST /api/create``, ``HEAD|POST /api/blobs/{digest}``.

Create streams Ollama's progress objects as NDJSON (``stream:false`` → the last object, or the error with its
status). Request errors are answered before the stream starts; later errors become a final ``{"error"}`` line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Generator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from caravan.asgi import parse_body
from caravan.errors import CaravanError, NotFound, error_body
from caravan.names import parse_digest
from registry.create import CreateRequest, plan_create, run_create
from registry.deps import StoreDep
from registry.modelfile import go_quote

router = APIRouter()
log = logging.getLogger(__name__)

Progress = Generator[dict[str, Any], None, None]


@router.post("/api/create")
async def create(request: Request, store: StoreDep) -> Response:
    body = parse_body(await request.body(), CreateRequest)
    plan = await run_in_threadpool(plan_create, store, body)
    return await progress_response(run_create(store, plan), stream=body.stream is not False)


@router.head("/api/blobs/{digest}")
async def head_blob(digest: str, store: StoreDep) -> Response:
    if not store.has_blob(parse_digest(digest)):
        raise NotFound(f"blob {go_quote(digest)} not found")
    return Response(status_code=200)


@router.post("/api/blobs/{digest}")
async def upload_blob(digest: str, request: Request, store: StoreDep) -> Response:
    """Raw body → blob, hashed while written; 201 when created, 200 when it was already there."""
    expected = parse_digest(digest)
    if store.has_blob(expected):
        return Response(status_code=200)
    await store.write_blob_stream(request.stream(), expected)
    return Response(status_code=201)


async def progress_response(events: Progress, *, stream: bool) -> Response:
    """NDJSON progress, or (``stream`` false) the last object; errors keep their status when not streaming."""
    if not stream:
        return JSONResponse(await run_in_threadpool(_last, events))
    return StreamingResponse(_ndjson(events), media_type="application/x-ndjson")


def _last(events: Progress) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for event in events:
        last = event
    return last


async def _ndjson(events: Progress) -> AsyncIterator[bytes]:
    """Progress lines; an error ends the stream with an ``{"error": ...}`` line (HTTP status stays 200)."""
    try:
        async for event in iterate_in_threadpool(events):
            yield _line(event)
    except CaravanError as exc:
        yield _line(error_body(exc))
    except Exception as exc:
        log.exception("create failed")
        yield _line({"error": str(exc)})
    finally:
        events.close()


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
