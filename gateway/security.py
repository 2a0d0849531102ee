"""Browser and network safety as Ollama has it (ollama-api.md §1), TLS, the exposure warning, and wiring.

    CORS        Origin allowed = OLLAMA_ORIGINS (comma list, ``*`` wildcards) + Ollama's defaults; a request
                with another Origin → 403 (so a web page cannot drive the API, even with a "simple" POST);
                a preflight from an allowed one → 204 with the allowed methods and headers
    Host guard  only when bound to loopback (anti DNS-rebinding): Host must be localhost, this machine, a
                *.localhost/.local/.internal name or a loopback/private/unspecified/local IP → else 403
                with an empty body; OPTIONS from an allowed host → 204
    TLS         CARAVAN_TLS_CERT + CARAVAN_TLS_KEY → uvicorn's ssl_certfile/ssl_keyfile
    Warning     listening beyond loopback with API keys off is logged as a WARNING and printed to stderr

Middleware order (outermost first): access log → CORS → Host guard → guard (auth, limits, usage, audit) → app.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
import sys
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caravan.errors import CaravanError
from caravan.settings import GatewaySettings
from gateway import audit
from gateway.guard import GuardMiddleware
from gateway.usage import UsageMetrics

log = logging.getLogger("gateway.security")

DEFAULT_ORIGINS = (
    *(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0")
      for scheme in ("http", "https") for port in ("", ":*")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)
ALLOWED_HEADERS = ", ".join((
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
    *(f"x-stainless-{name}" for name in (
        "arch", "async", "custom-poll-interval", "helper-method", "lang", "os", "package-version", "poll-helper",
        "retry-count", "runtime", "runtime-version", "timeout")),
))
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
EXPOSED_HEADERS = "X-Request-Id, Retry-After"
EXPOSED_WARNING = (
    "WARNING: the gateway listens on {host}:{port}, beyond this machine, and API keys are OFF: anyone who "
    "can reach it may run, pull, create and delete models. Set CARAVAN_ADMIN_KEY (or CARAVAN_AUTH=true) to "
    "require keys, or bind 127.0.0.1 (OLLAMA_HOST)."
)


def origin_list(extra: str) -> list[str]:
    return [o.strip() for o in extra.split(",") if o.strip()] + list(DEFAULT_ORIGINS)


def origin_pattern(origins: list[str]) -> re.Pattern[str]:
    """One regex for the allowed origins; ``*`` matches any run of characters."""
    parts = ["".join(".*" if piece == "*" else re.escape(piece) for piece in re.split(r"(\*)", o)) for o in origins]
    return re.compile("|".join(f"(?:{p})" for p in parts))


class CorsMiddleware:
    """Ollama's CORS rules (gin-contrib/cors with wildcards, no credentials)."""

    def __init__(self, app: ASGIApp, origins: str = "") -> None:
        self.app = app
        allowed = origin_list(origins)
        self.allow_all = "*" in allowed
        self.pattern = origin_pattern(allowed)

    def allowed(self, origin: str) -> bool:
        return self.allow_all or self.pattern.fullmatch(origin) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        origin = headers.get("origin") if headers else None
        if headers is None or not origin or origin in (f"http://{headers.get('host')}",
                                                       f"https://{headers.get('host')}"):
            await self.app(scope, receive, send)
            return
        if not self.allowed(origin):
            await Response(status_code=403)(scope, receive, send)
            return
        allow = {"Access-Control-Allow-Origin": "*" if self.allow_all else origin, "Vary": "Origin"}
        if scope["method"] == "OPTIONS":
            preflight = {**allow, "Access-Control-Allow-Methods": ALLOWED_METHODS,
                         "Access-Control-Allow-Headers": ALLOWED_HEADERS, "Access-Control-Max-Age": "43200"}
            await Response(status_code=204, headers=preflight)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out.update({**allow, "Access-Control-Expose-Headers": EXPOSED_HEADERS})
            await send(message)

        await self.app(scope, receive, send_with_cors)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.cache
def local_addresses() -> frozenset[str]:
    """This machine's name and the addresses it resolves to."""
    name = socket.gethostname().lower()
    try:
        addresses = socket.gethostbyname_ex(name)[2]
    except OSError:
        addresses = []
    return frozenset({name, *addresses})


def host_allowed(host_header: str) -> bool:
    """Ollama's allowed-host rule for a ``Host`` header (port stripped)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("", "localhost") or host in local_addresses() or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified


class HostGuard:
    """403 (empty body) for foreign Host headers; installed only when the gateway binds loopback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not host_allowed(Headers(scope=scope).get("host", "")):
            await Response(status_code=403)(scope, receive, send)
        elif scope["method"] == "OPTIONS":
            await Response(status_code=204)(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def tls_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's TLS arguments: both files or neither."""
    if settings.tls_cert is None and settings.tls_key is None:
        return {}
    if settings.tls_cert is None or settings.tls_key is None:
        raise CaravanError("TLS needs both CARAVAN_TLS_CERT and CARAVAN_TLS_KEY")
    return {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}


def startup_checks(settings: GatewaySettings) -> None:
    """Say loudly what an exposed gateway lets anyone do."""
    host, port = settings.bind
    if is_loopback(host):
        return
    if not settings.auth_enabled:
        message = EXPOSED_WARNING.format(host=host, port=port)
        log.warning(message, extra={"bind": f"{host}:{port}", "auth": False})
        print(f"\n{'!' * 100}\n{message}\n{'!' * 100}\n", file=sys.stderr, flush=True)
    elif not tls_options(settings):
        log.warning("API keys cross the network in clear text: set CARAVAN_TLS_CERT and CARAVAN_TLS_KEY "
                    "or put a TLS proxy in front", extra={"bind": f"{host}:{port}"})


def install(app: FastAPI, settings: GatewaySettings, registry: Any) -> None:
    """Guard, Host guard and CORS (outermost of the three last), the keys and usage routers, the audit log.

    ``registry`` is the gateway's prometheus ``CollectorRegistry`` (per-user counters live beside the rest).
    """
    from gateway.routes import keys, usage

    audit.configure(settings.audit_log)
    app.state.usage_metrics = UsageMetrics(registry)
    app.add_middleware(GuardMiddleware, settings=settings, usage_metrics=app.state.usage_metrics)
    if is_loopback(settings.bind[0]):
        app.add_middleware(HostGuard)
    app.add_middleware(CorsMiddleware, origins=settings.origins)
    app.include_router(keys.router)
    app.include_router(usage.router)
