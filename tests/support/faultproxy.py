"""A reverse proxy in a background thread, in front of a registry: it counts what passes and injects faults.

It keeps the client's ``Host`` header, so a registry's redirects point back through the proxy (Caravan's
``/v2/`` blob redirect goes to ``localhost:<proxy port>``). Blob bodies are those of ``.../blobs/<digest>`` and
``/v2/_blobs/<digest>`` GETs. Faults, each set by the test before the request:

    manifest_status   answer manifest GETs with this status (404, 401, 500) instead of forwarding
    drop_at           blob byte counts at which the response crossing it is cut (connection dropped)
    corrupt_digest    flip the first byte of that blob's bodies
    hold(at)          once ``at`` blob bytes passed, hold every blob body until :meth:`resume`
    token             require ``Authorization: Bearer <token>`` on manifest and blob requests; the 401 names a
                      bearer realm on this proxy (``/token``), which hands the token out
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from caravan.cluster import free_port

HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


class Dropped(Exception):
    """Raised inside a body to cut the connection."""


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int


class FaultProxy:
    """Start with :meth:`start`, stop with :meth:`stop`; counters are read from the test thread."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.seen: list[Seen] = []
        self.blob_bytes = 0
        self.manifest_status: int | None = None
        self.drop_at: list[int] = []
        self.drops = 0
        self.corrupt_digest: str | None = None
        self.pause_at: int | None = None
        self.paused = threading.Event()
        self.token: str | None = None
        self.token_requests: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.Event | None = None
        self._http: httpx.AsyncClient | None = None
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=METHODS)], lifespan=self._lifespan)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical",
                                                     timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        for _ in range(400):
            if self._server.started:
                return self
            self._thread.join(0.025)
        raise RuntimeError("fault proxy did not start")

    def stop(self) -> None:
        self.resume()
        self._server.should_exit = True
        self._thread.join(10)

    def hold(self, at: int) -> None:
        """Hold every blob body once ``at`` blob bytes have passed (``paused`` is set when it happens)."""
        self.paused.clear()
        if self._loop is not None and self._resume is not None:
            self._loop.call_soon_threadsafe(self._resume.clear)
        self.pause_at = at

    def resume(self) -> None:
        """Let held blob bodies continue (and stop holding new ones)."""
        self.pause_at = None
        if self._loop is not None and self._resume is not None:
            self._loop.call_soon_threadsafe(self._resume.set)

    def reset(self) -> None:
        self.seen.clear()
        self.blob_bytes = self.drops = 0
        self.manifest_status = self.corrupt_digest = self.token = None
        self.drop_at = []

    def blob_requests(self, digest: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and _is_blob(s.path) and digest in s.path]

    def manifest_requests(self) -> list[Seen]:
        return [s for s in self.seen if "/manifests/" in s.path]

    # -- the proxy ------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._resume = asyncio.Event()
        self._http = httpx.AsyncClient(base_url=self.upstream, timeout=None)
        yield
        await self._http.aclose()

    def _challenge(self, request: Request) -> Response | None:
        path = request.url.path
        if self.token is None or not path.startswith("/v2/") or "/_blobs/" in path or path == "/v2/":
            return None
        if request.headers.get("authorization") == f"Bearer {self.token}":
            return None
        realm = f'Bearer realm="http://127.0.0.1:{self.port}/token",service="proxy",scope="repository:x:pull"'
        return JSONResponse({"errors": [{"code": "UNAUTHORIZED"}]}, 401, headers={"WWW-Authenticate": realm})

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        if path == "/token":
            self.token_requests.append(str(request.url))
            return JSONResponse({"token": self.token})
        early = self._challenge(request)
        if early is None and self.manifest_status and "/manifests/" in path:
            early = JSONResponse({"errors": [{"code": "INJECTED", "message": "injected"}]}, self.manifest_status)
        if early is not None:
            self.seen.append(Seen(request.method, path, request.headers.get("range"), early.status_code))
            return early
        return await self._forward(request)

    async def _forward(self, request: Request) -> Response:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP | {"content-length"}}
        upstream = await self._http.send(self._http.build_request(
            request.method, request.url.path, params=request.query_params, headers=headers,
            content=await request.body()), stream=True)
        self.seen.append(Seen(request.method, request.url.path, request.headers.get("range"), upstream.status_code))
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
        body = self._blob_body(request.url.path, upstream) if _is_blob(request.url.path) else upstream.aiter_raw()
        return StreamingResponse(_closing(body, upstream), status_code=upstream.status_code, headers=out)

    async def _blob_body(self, path: str, upstream: httpx.Response) -> AsyncIterator[bytes]:
        first = True
        async for chunk in upstream.aiter_raw():
            if first and self.corrupt_digest and self.corrupt_digest in path and chunk:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            first = False
            if self.pause_at is not None and self.blob_bytes >= self.pause_at and self._resume is not None:
                self.paused.set()
                await self._resume.wait()
            if self.drop_at and self.blob_bytes >= self.drop_at[0]:
                self.drop_at.pop(0)
                self.drops += 1
                raise Dropped(path)
            yield chunk
            self.blob_bytes += len(chunk)  # counted once handed to the connection (not for a dead one)


def _is_blob(path: str) -> bool:
    return ("/blobs/" in path and "/uploads" not in path) or path.startswith("/v2/_blobs/")


async def _closing(body: AsyncIterator[bytes], upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        await upstream.aclose()
