"""The gateway's front door for API calls: authenticate, authorise, limit, account, audit (pure ASGI).

One middleware, so no handler changes: every route is classed by method and path (``access_for``):

    OPEN       /, /api/version, /healthz, /api/status (and /metrics unless CARAVAN_METRICS_AUTH)
    ADMIN      pull, push, create, copy, delete, blobs, /api/keys…          user keys → 403
    INFERENCE  generate, chat, embed(dings), /v1 completions/embeddings/…  model allow-list, tokens/day,
                                                                            concurrency lease
    MODEL      /api/show (body), /v1/models/{model} (path)                  model allow-list
    LIST       /api/tags, /api/ps, /v1/models                               filtered to the allow-list
    USER       everything else                                              any valid key

Then, in order: 401 (no or unknown key, before the body is read), 403 (role), 429 requests/minute, 429
tokens/day, 429 concurrency, 413 body size, 403 (model, named in the body). The key never travels further:
``Authorization`` and ``X-Api-Key`` are removed from the request before the app (and the registry it proxies
to) sees it. Refusals use Ollama's ``{"error": ...}`` body, or OpenAI's envelope under ``/v1/``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caravan import logs
from caravan.errors import CaravanError, Forbidden, error_body
from caravan.settings import GatewaySettings
from caravan.wire.auth import openai_error
from gateway import auth
from gateway.audit import AuditEntry
from gateway.auth import Authenticator, KeyStore, Principal, model_allowed
from gateway.limits import Limiter, declared_length, read_body, replay, too_large
from gateway.usage import Tally, UsageBook, UsageMetrics, current_tally


class Access(enum.Enum):
    OPEN = "open"
    USER = "user"
    ADMIN = "admin"
    INFERENCE = "inference"
    MODEL = "model"
    LIST = "list"


OPEN_PATHS = frozenset({"/", "/api/version", "/healthz", "/api/status"})
METRICS_PATHS = frozenset({"/metrics", "/api/status/prometheus-targets"})
ADMIN_PATHS = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/keys"})
INFERENCE_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/v1/chat/completions",
                             "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"})
LIST_PATHS = frozenset({"/api/tags", "/api/ps", "/v1/models"})
STRIPPED = (b"authorization", b"x-api-key")
log = logging.getLogger(__name__)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def access_for(method: str, path: str, metrics_auth: bool = False) -> Access:
    """How a request is guarded."""
    if method == "OPTIONS" or path in OPEN_PATHS or (path in METRICS_PATHS and not metrics_auth):
        return Access.OPEN
    if path in ADMIN_PATHS or path.startswith(("/api/keys/", "/api/blobs/")):
        return Access.ADMIN
    if path in INFERENCE_PATHS:
        return Access.INFERENCE
    if path == "/api/show" or path.startswith("/v1/models/"):
        return Access.MODEL
    if path in LIST_PATHS:
        return Access.LIST
    return Access.USER


def requested_model(path: str, body: Any) -> str:
    """The model a request names: ``/v1/models/{model}``, else the body's ``model`` (or ``name``)."""
    if path.startswith("/v1/models/"):
        return path.removeprefix("/v1/models/")
    if isinstance(body, dict):
        for name in ("model", "name"):
            if isinstance(body.get(name), str) and body[name]:
                return str(body[name])
    return ""


def authorize(who: Principal, access: Access, method: str, path: str) -> None:
    """403 for a user on an admin route, or a key limited to models on a route that names none."""
    if access is Access.ADMIN and not who.is_admin:
        raise Forbidden(f"forbidden: {method} {path} needs an admin API key")
    if who.models is not None and access is Access.USER and path.startswith("/v1/") and method in BODY_METHODS:
        raise Forbidden(f"forbidden: {path} is not available to keys limited to models")


def check_model(who: Principal, model: str) -> None:
    if model and not model_allowed(who.models, model):
        raise Forbidden(f"forbidden: model '{model}' is not allowed for this API key")


def parse(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def filter_listing(path: str, raw: bytes, allowed: tuple[str, ...] | None) -> bytes:
    """/api/tags, /api/ps or /v1/models with only the allowed models (an unreadable body lists none)."""
    data = parse(raw)
    field_name, name_keys = ("data", ("id",)) if path == "/v1/models" else ("models", ("model", "name"))
    if not isinstance(data, dict):
        data = {field_name: []}
    entries = data.get(field_name) or []
    data[field_name] = [e for e in entries if isinstance(e, dict)
                        and model_allowed(allowed, next((str(e[k]) for k in name_keys if e.get(k)), ""))]
    return json.dumps(data, separators=(",", ":")).encode()


def buffered(send: Send, transform: Callable[[bytes], bytes]) -> Send:
    """A ``send`` that holds a 200 response's whole body and passes it through ``transform``."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if start["status"] == 200 and body:
            body = transform(body)
            headers = MutableHeaders(scope=start)
            headers["content-length"] = str(len(body))
            for name in ("transfer-encoding", "content-encoding"):
                if name in headers:
                    del headers[name]
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return wrapped


@dataclass
class Admitted:
    """A request that passed the guard."""

    who: Principal
    receive: Receive
    tally: Tally
    lease: str | None = None
    body: Any = None
    listing: bool = False


class GuardMiddleware:
    """Authentication, authorisation, limits, usage and audit for every non-open request."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings, usage_metrics: UsageMetrics) -> None:
        self.app = app
        self.settings = settings
        self.usage_metrics = usage_metrics
        self._parts: tuple[Authenticator, Limiter, UsageBook] | None = None

    def parts(self, scope: Scope) -> tuple[Authenticator, Limiter, UsageBook]:
        """Built on first use: Redis exists once the app's lifespan has started."""
        if self._parts is None:
            redis = scope["app"].state.scheduler.redis
            self._parts = (Authenticator(self.settings, KeyStore(redis)),
                           Limiter(redis, self.settings.stream_lease),
                           UsageBook(redis, self.usage_metrics, self.settings.usage_retention_days))
        return self._parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = access_for(scope["method"], scope["path"], self.settings.metrics_auth)
        if access is Access.OPEN:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        entry = AuditEntry(scope["method"], scope["path"], client=client[0] if client else "")
        try:
            admitted = await self.admit(scope, receive, access, entry)
        except (CaravanError, RedisError) as exc:
            await self.refuse(scope, receive, send, as_caravan_error(exc), entry)
            entry.write(time.perf_counter() - started, logs.request_id.get(), 0, 0)
            return
        try:
            await self.serve(scope, send, admitted, entry)
        finally:
            tally = admitted.tally
            entry.write(time.perf_counter() - started, logs.request_id.get(), tally.prompt_tokens,
                        tally.completion_tokens)

    async def refuse(self, scope: Scope, receive: Receive, send: Send, exc: CaravanError, entry: AuditEntry) -> None:
        entry.status = exc.status
        if exc.status in (401, 403, 413, 429):
            self.usage_metrics.rejected.labels(entry.user, str(exc.status)).inc()
        await send_error(scope, receive, send, exc)

    async def admit(self, scope: Scope, receive: Receive, access: Access, entry: AuditEntry) -> Admitted:
        """Every check, cheapest and most telling first; the lease is given back if a later check fails."""
        authenticator, limiter, _ = self.parts(scope)
        who = await authenticator.authenticate(Headers(scope=scope))
        entry.user, entry.role, entry.key_id = who.name, who.role, who.key_id
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in STRIPPED]
        authorize(who, access, scope["method"], scope["path"])
        await limiter.count_request(who)
        lease = None
        if access is Access.INFERENCE:
            await limiter.check_tokens(who)
            lease = await limiter.acquire(who)
        try:
            return await self.read(scope, receive, access, who, lease, entry)
        except BaseException:
            await limiter.release(who, lease)
            raise

    async def read(self, scope: Scope, receive: Receive, access: Access, who: Principal, lease: str | None,
                   entry: AuditEntry) -> Admitted:
        """Body (size-limited), model checks, and what the rest of the request needs."""
        admitted = Admitted(who, receive, Tally(user=who.name, key_id=who.key_id), lease)
        headers = Headers(scope=scope)
        if scope["method"] in BODY_METHODS and not scope["path"].startswith("/api/blobs/"):
            limit = self.settings.max_body_bytes
            if limit and (declared_length(dict(headers)) or 0) > limit:
                raise too_large(limit)
            raw = await read_body(receive, limit)
            admitted.receive, admitted.body = replay(raw, receive), parse(raw)
            entry.note_body(admitted.body, self.settings.audit_prompts)
        elif (scope["path"].startswith("/api/blobs/") and self.settings.max_blob_bytes
              and (declared_length(dict(headers)) or 0) > self.settings.max_blob_bytes):
            raise too_large(self.settings.max_blob_bytes)
        entry.model = requested_model(scope["path"], admitted.body)
        if access in (Access.INFERENCE, Access.MODEL):
            check_model(who, entry.model)
        if access is Access.LIST and who.models is not None and scope["method"] == "GET":
            admitted.listing = True
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
        return admitted

    async def serve(self, scope: Scope, send: Send, admitted: Admitted, entry: AuditEntry) -> None:
        """Run the app as the admitted caller; usage is written before any byte that follows a ``done``."""
        _, limiter, book = self.parts(scope)
        tally = admitted.tally

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry.status = int(message["status"])
            if tally.pending:
                await safe_flush(book, tally)
            await send(message)

        out: Send = send_counted
        if admitted.listing:
            out = buffered(send_counted, lambda raw: filter_listing(scope["path"], raw, admitted.who.models))
        tokens = auth.current_principal.set(admitted.who), current_tally.set(tally)
        try:
            await self.app(scope, admitted.receive, out)
        finally:
            auth.current_principal.reset(tokens[0])
            current_tally.reset(tokens[1])
            await finish(book, limiter, admitted)


async def safe_flush(book: UsageBook, tally: Tally) -> None:
    """Write usage; a Redis failure loses these counts (logged) rather than the response."""
    try:
        await book.flush(tally)
    except RedisError as exc:
        log.warning("usage not recorded", extra={"user": tally.user, "model": tally.model, "error": str(exc)})


async def finish(book: UsageBook, limiter: Limiter, admitted: Admitted) -> None:
    """After the response: usage not yet written (the client left early), then the lease."""
    if admitted.tally.pending:
        await safe_flush(book, admitted.tally)
    with contextlib.suppress(RedisError):  # an unreleased lease expires with CARAVAN_STREAM_LEASE
        await limiter.release(admitted.who, admitted.lease)


def as_caravan_error(exc: Exception) -> CaravanError:
    if isinstance(exc, CaravanError):
        return exc
    return CaravanError(f"the cluster queue (Redis) is unavailable: {exc}", status=503)


async def send_error(scope: Scope, receive: Receive, send: Send, exc: CaravanError) -> None:
    """A refusal in the API's own shape (OpenAI's envelope under /v1/)."""
    body = openai_error(exc) if scope["path"].startswith("/v1/") else error_body(exc)
    headers = dict(exc.headers or {})
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="caravan"'
    response = JSONResponse(body, status_code=exc.status, headers=headers)
    await response(scope, receive, send)

