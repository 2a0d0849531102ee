"""Generate and chat, from validated request to response: checks, job building, streaming or collecting.

Handlers stay thin; everything the two endpoints share lives here.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from caravan import logs
from caravan.duration import parse_keep_alive
from caravan.errors import BadRequest
from caravan.options import merge_options, validate_options
from caravan.queue import Event, InferenceJob, encode_keep_alive
from caravan.settings import GatewaySettings
from caravan.wire.ollama import (
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    InferenceRequest,
    ResponseMessage,
    dump,
)
from caravan.wire.registry import ModelRecord
from gateway.registry_client import RegistryClient
from gateway.scheduler import Scheduler, conversation_key
from gateway.streaming import ReplyReader, collect, ndjson_stream


@dataclass
class Prepared:
    record: ModelRecord
    job: InferenceJob
    keep_alive: float
    started: float
    conversation: list[dict[str, Any]] | None = None  # the client's chat messages, for session affinity


_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def request_id_for(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a safe token, else a new one."""
    return header if header and _REQUEST_ID.match(header) else uuid.uuid4().hex


class InferenceService:
    """Shared by /api/generate, /api/chat (and the OpenAI layer)."""

    def __init__(self, settings: GatewaySettings, redis: Redis, scheduler: Scheduler, registry: RegistryClient):
        self.settings = settings
        self.redis = redis
        self.scheduler = scheduler
        self.registry = registry

    async def prepare(self, body: InferenceRequest, op: str, request_id: str | None = None,
                      **fields: Any) -> Prepared:
        started = time.perf_counter()
        logs.request_id.set(request_id_for(request_id))
        record = await self.registry.resolve(body.model)
        keep_alive = parse_keep_alive(body.keep_alive, self.settings.keep_alive)
        check_capabilities(record, body)
        request_options = validate_options(body.options)
        options = merge_options(record.params, request_options)
        job = InferenceJob(
            id=logs.request_id.get() or uuid.uuid4().hex, op=op, model=body.model,
            spec=self.scheduler.spec_for(record, request_options), options=options,
            format=body.format or None, keep_alive=encode_keep_alive(keep_alive), created=time.time(), **fields,
        )
        return Prepared(record, job, keep_alive, started)

    async def unload(self, prepared: Prepared) -> None:
        await self.scheduler.unload(prepared.record.blob)

    async def run(self, request: Request, prepared: Prepared, stream: bool, shaper: ShaperFactory) -> Response:
        conversation = prepared.conversation if self.settings.affinity else None
        affinity = conversation_key(conversation[:-1]) if conversation and len(conversation) > 1 else None
        await self.scheduler.submit(prepared.job, affinity)
        reader = ReplyReader(self.redis, self.scheduler, prepared.job, request, self.settings.load_timeout)
        try:
            first = await reader.first()
        except BaseException:
            await reader.close()
            raise
        shape = shaper(prepared, reader)
        headers = {"X-Request-Id": prepared.job.id}
        on_done = self._remember(conversation, reader)
        if stream and prepared.job.op != "load":
            return ndjson_stream(reader, first, shape, headers, on_done)
        text, final = await collect(reader, first)
        await on_done(text)
        body = shape(final)
        assert body is not None
        return JSONResponse(merge_text(body, text), headers=headers)


    def _remember(self, conversation: list[dict[str, Any]] | None,
                  reader: ReplyReader) -> Callable[[str], Awaitable[None]]:
        """After a chat turn: remember which worker holds this conversation's KV cache."""

        async def done(text: str) -> None:
            if conversation and reader.served_by:
                turn = [*conversation, {"role": "assistant", "content": text}]
                await self.scheduler.remember(conversation_key(turn), reader.served_by)

        return done


ShaperFactory = Callable[[Prepared, ReplyReader], Callable[[Event], dict[str, Any] | None]]


def check_capabilities(record: ModelRecord, body: InferenceRequest) -> None:
    caps = set(record.capabilities)
    if "completion" not in caps:
        verb = "chat" if isinstance(body, ChatRequest) else "generate"
        raise BadRequest(f'"{body.model}" does not support {verb}')
    if body.think and "thinking" not in caps:
        raise BadRequest(f'"{body.model}" does not support thinking')
    if isinstance(body, GenerateRequest) and body.suffix and "insert" not in caps:
        raise BadRequest(f"{record.name} does not support insert")
    if isinstance(body, ChatRequest) and body.tools and "tools" not in caps:
        raise BadRequest(f"{record.name} does not support tools")
    images = body.images if isinstance(body, GenerateRequest) else [m.images for m in body.messages if m.images]  # type: ignore[attr-defined]
    if images and "vision" not in caps:
        raise BadRequest(f'"{body.model}" does not support images: the model has no vision capability')


def metrics(prepared: Prepared, reader: ReplyReader, event: Event) -> dict[str, Any]:
    now = time.perf_counter()
    stats = dict(event.stats or {})
    stats.pop("context", None)
    loaded = reader.started_at or now
    return {
        "total_duration": int((now - prepared.started) * 1e9),
        "load_duration": int((loaded - prepared.started) * 1e9),
        **stats,
    }


def merge_text(body: dict[str, Any], text: str) -> dict[str, Any]:
    if "message" in body:
        body["message"]["content"] = text
    else:
        body["response"] = text
    return body


def generate_shaper(prepared: Prepared, reader: ReplyReader) -> Callable[[Event], dict[str, Any] | None]:
    model = prepared.job.model

    def shape(event: Event) -> dict[str, Any] | None:
        if event.t == "tok":
            return dump(GenerateResponse(model=model, response=event.text))
        if event.t != "done":
            return None
        context = (event.stats or {}).get("context")
        final = GenerateResponse(model=model, done=True, done_reason=event.done_reason, context=context)
        if event.done_reason in ("load", "unload"):
            return dump(final)
        return {**dump(final), **metrics(prepared, reader, event)}

    return shape


def chat_shaper(prepared: Prepared, reader: ReplyReader) -> Callable[[Event], dict[str, Any] | None]:
    model = prepared.job.model

    def shape(event: Event) -> dict[str, Any] | None:
        if event.t == "tok":
            return dump(ChatResponse(model=model, message=ResponseMessage(content=event.text)))
        if event.t != "done":
            return None
        final = ChatResponse(model=model, done=True, done_reason=event.done_reason)
        if event.done_reason in ("load", "unload"):
            return dump(final)
        return {**dump(final), **metrics(prepared, reader, event)}

    return shape
