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
from caravan.errors import BadRequest, InvalidName, NotFound
from caravan.grammar import gateway_grammar
from caravan.names import ModelName
from caravan.options import merge_options, validate_options
from caravan.queue import Event, InferenceJob, encode_keep_alive
from caravan.settings import GatewaySettings
from caravan.wire.ollama import ChatRequest, GenerateRequest, InferenceRequest
from caravan.wire.registry import ModelRecord
from gateway.limits import apply_policy
from gateway.metrics import GatewayMetrics
from gateway.registry_client import RegistryClient
from gateway.scheduler import Scheduler, conversation_key
from gateway.shaping import merge_chunks
from gateway.streaming import OnDone, ReplyReader, Shaper, collect, ndjson_stream


@dataclass
class Prepared:
    record: ModelRecord
    job: InferenceJob
    keep_alive: float
    started: float
    conversation: list[dict[str, Any]] | None = None  # the client's chat messages, for session affinity


@dataclass
class Opened:
    """A submitted job whose first event has arrived: what a relay (NDJSON, SSE, collect) needs."""

    reader: ReplyReader
    first: Event
    headers: dict[str, str]
    on_done: OnDone


_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def request_id_for(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a safe token, else a new one."""
    return header if header and _REQUEST_ID.match(header) else uuid.uuid4().hex


class InferenceService:
    """Shared by /api/generate, /api/chat (and the OpenAI layer)."""

    def __init__(self, settings: GatewaySettings, redis: Redis, scheduler: Scheduler, registry: RegistryClient,
                 metrics: GatewayMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
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
            format=body.format or None, keep_alive=encode_keep_alive(keep_alive), created=time.time(),
            **job_extras(record, body), **fields,
        )
        return Prepared(record, job, keep_alive, started)

    async def prepare_generate(self, body: GenerateRequest, request_id: str | None = None) -> Prepared:
        """A generate job (or a load-only one for an empty prompt), with system/template/history resolved."""
        if not body.model:
            raise NotFound("model '' not found")
        if body.raw and (body.template or body.system or body.context):
            raise BadRequest("raw mode does not support template, system, or context")
        load_only = not body.prompt and not body.suffix
        prepared = await self.prepare(body, "load" if load_only else "generate", request_id, prompt=body.prompt,
                                      suffix=body.suffix, raw=body.raw, context=body.context)
        record, job = prepared.record, prepared.job
        job.system = body.system if body.system is not None else record.system
        job.template = body.template or record.template
        job.messages = [] if body.context else record.messages
        return prepared

    async def prepare_chat(self, body: ChatRequest, request_id: str | None = None) -> Prepared:
        """A chat job (or a load-only one without messages): model SYSTEM and MESSAGE history prepended."""
        if not body.model:
            raise BadRequest("model is required")
        op = "chat" if body.messages else "load"
        prepared = await self.prepare(body, op, request_id, tools=body.tools)
        record, job = prepared.record, prepared.job
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        prepared.conversation = messages.copy()
        if record.system and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": record.system})
        job.messages = record.messages + messages
        job.template = record.template
        return prepared

    async def unload(self, prepared: Prepared) -> None:
        await self.scheduler.unload(prepared.record.blob)

    async def run(self, request: Request, prepared: Prepared, stream: bool, shaper: ShaperFactory) -> Response:
        opened = await self.open(request, prepared)
        shape = shaper(prepared, opened.reader)
        if stream and prepared.job.op != "load":
            return ndjson_stream(opened.reader, opened.first, shape, opened.headers, opened.on_done)
        chunks = await collect(opened.reader, opened.first, shape, opened.on_done)
        return JSONResponse(merge_chunks(chunks), headers=opened.headers)

    async def open(self, request: Request, prepared: Prepared) -> Opened:
        """Submit the job and wait for its first event (errors before it keep their HTTP status)."""
        conversation = prepared.conversation if self.settings.affinity else None
        affinity = conversation_key(conversation[:-1]) if conversation and len(conversation) > 1 else None
        apply_policy(prepared.job, self.settings)  # the caller's user/priority; role caps (every job passes here)
        submitted = await self.scheduler.submit(prepared.job, affinity)
        reader = ReplyReader(self.redis, self.scheduler, prepared.job, request, self.settings.load_timeout,
                             self.metrics.request(prepared.record.name, prepared.started))
        if submitted.start:  # handed to a waiting worker: its start event need not be read back
            reader.feed(*submitted.start)
        try:
            first = await reader.first()
        except BaseException:
            await reader.close()
            raise
        headers = {"X-Request-Id": prepared.job.id, "X-Caravan-Worker": reader.served_by or ""}
        return Opened(reader, first, headers, self._remember(conversation, reader))


    def _remember(self, conversation: list[dict[str, Any]] | None,
                  reader: ReplyReader) -> Callable[[str], Awaitable[None]]:
        """After a chat turn: remember which worker holds this conversation's KV cache."""

        async def done(text: str) -> None:
            if conversation and reader.served_by:
                turn = [*conversation, {"role": "assistant", "content": text}]
                await self.scheduler.remember(conversation_key(turn), reader.served_by)

        return done


ShaperFactory = Callable[[Prepared, ReplyReader], Shaper]


def job_extras(record: ModelRecord, body: InferenceRequest) -> dict[str, Any]:
    """What the worker needs besides prompt and options: the grammar of ``format`` (validated here, so an
    unconvertible schema is a 400 before queueing), ``think`` (on by default for thinking models), logprobs,
    truncation and context shift."""
    think = body.think
    if think is None and "thinking" in record.capabilities:
        think = True
    return {
        "grammar": gateway_grammar(body.format), "think": think,
        "logprobs": bool(body.logprobs or body.top_logprobs), "top_logprobs": body.top_logprobs or 0,
        "truncate": body.truncate is not False, "shift": body.shift is not False,
    }


def check_capabilities(record: ModelRecord, body: InferenceRequest) -> None:
    caps = set(record.capabilities)
    if "completion" not in caps:
        verb = "chat" if isinstance(body, ChatRequest) else "generate"
        raise BadRequest(f'"{body.model}" does not support {verb}')
    if body.think and "thinking" not in caps:
        raise BadRequest(f'"{body.model}" does not support thinking')
    if isinstance(body, GenerateRequest) and body.suffix and "insert" not in caps:
        raise BadRequest(f"{full_name(record.name)} does not support insert")
    if isinstance(body, ChatRequest) and body.tools and "tools" not in caps:
        raise BadRequest(f"{full_name(record.name)} does not support tools")
    images = body.images if isinstance(body, GenerateRequest) else [m.images for m in body.messages if m.images]  # type: ignore[attr-defined]
    if images and "vision" not in caps:
        raise BadRequest(f'"{body.model}" does not support images: the model has no vision capability')


def full_name(name: str) -> str:
    """``registry.ollama.ai/library/x:latest``: capability errors name the model fully, as Ollama does."""
    try:
        return ModelName.parse(name).full
    except InvalidName:
        return name
