"""The registry's one guard: with ``CARAVAN_INTERNAL_TOKEN`` set, only Caravan services may change models.

Open to anyone who can reach the port: ``GET|HEAD /v2/...`` (LAN machines and other Caravans pull from here),
``/healthz`` and ``/metrics``. Everything else — Ollama's model API, blob downloads for workers, uploads —
needs the ``X-Caravan-Internal-Token`` header the gateway and workers send, so publishing the registry's port
never bypasses the gateway's API keys. Without a token (the default, loopback-only setups) nothing is checked.
"""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from caravan.registry_auth import INTERNAL_HEADER

OPEN_PATHS = ("/healthz", "/metrics")


def is_open(method: str, path: str) -> bool:
    """Requests anyone may make."""
    return path in OPEN_PATHS or (method in ("GET", "HEAD") and (path.startswith("/v2/") or path == "/v2"))


class InternalTokenGuard:
    """Refuse non-open requests without the internal token (401, Ollama's error shape)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(INTERNAL_HEADER.lower().encode(), b"")
        if hmac.compare_digest(given, self.token):
            await self.app(scope, receive, send)
            return
        await JSONResponse({"error": "unauthorized: this registry only takes model changes from its gateway"},
                           status_code=401)(scope, receive, send)
