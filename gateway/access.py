"""Per-request accounting for every HTTP request: a request id, one access log line, ``caravan_requests_total``.

Pure ASGI (no ``BaseHTTPMiddleware``), so streamed bodies pass through untouched and the context variables set
here are the ones the handler, the reply reader and the log formatter see. The request id is the client's
``X-Request-Id`` when it is a safe token, else a new one; an inference request's job carries it
(``gateway.inference``), so the worker logs the same id (``caravan.logs.request_id``), and every response
carries it back as ``X-Request-Id``. The access line holds method, path, status, model and duration: never the
query string, the body or any header.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caravan.logs import request_id
from gateway.inference import request_id_for
from gateway.metrics import GatewayMetrics, RequestLabels, current_request

log = logging.getLogger("gateway.access")
QUIET_PATHS = frozenset({"/metrics", "/healthz"})  # scraped every few seconds: logged at DEBUG


def endpoint_of(scope: Scope) -> str:
    """The matched route's path template (bounded label values), or ``unmatched``."""
    route = scope.get("route")
    return str(getattr(route, "path", "") or "unmatched")


class PlainRoute(Route):
    """A Starlette route (no FastAPI layer) that names itself in the scope as FastAPI's routes do."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


class AccessMiddleware:
    """Wraps the app: request id in, ``X-Request-Id`` out, then one metric sample and one log line."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        labels = RequestLabels()
        tokens = request_id.set(request_id_for(Headers(scope=scope).get("x-request-id"))), current_request.set(labels)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-Id"] = request_id.get() or ""
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.finish(scope, status, labels.model, time.perf_counter() - started)
            current_request.reset(tokens[1])
            request_id.reset(tokens[0])

    def finish(self, scope: Scope, status: int, model: str, seconds: float) -> None:
        """Count the request and write its access line."""
        endpoint = endpoint_of(scope)
        self.metrics.count_request(endpoint, model, status)
        path = str(scope.get("path", ""))
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        extra = {"method": scope.get("method", ""), "path": path, "status": status,
                 "duration": round(seconds, 4), **({"model": model} if model else {})}
        log.log(level, "request", extra=extra)
