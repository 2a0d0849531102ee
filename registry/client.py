"""A client for any registry that speaks the Ollama/OCI distribution protocol (ollama-api.md §7): Ollama's
registry, Hugging Face's, a plain OCI registry (``docker-registry``), or another Caravan's ``/v2/``.

    manifest   GET /v2/<repo>/manifests/<tag>  (Accept: docker v2, OCI)
    auth       any 401 with a bearer challenge → token from the realm (registry/auth.py), one retry
    blob       GET /v2/<repo>/blobs/<digest>: same-host redirects followed, the first cross-host redirect's
               Location is the direct URL (a CDN), a 200 means the registry serves the bytes itself; then
               ranged GETs to the direct URL (no auth header unless it is the registry's own host)
    upload     HEAD blob → POST uploads/ (?mount=&from=) → PATCH parts (307 → PUT to storage) → PUT ?digest=
    retries    connection errors, 429 and 5xx: ``retries`` attempts, sleeping ``backoff`` × 2^attempt

Names on the default host go to ``TransferOptions.upstream`` (a LAN mirror when configured); others to
``https://<host>`` (``http`` with ``insecure``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from caravan.errors import BadRequest, CaravanError, NotFound, Unauthorized, UpstreamError
from caravan.names import DEFAULT_HOST, ModelName
from caravan.settings import RegistrySettings
from registry import rangefetch
from registry.auth import fetch_token, load_signer, parse_challenge
from registry.oci import MANIFEST_ACCEPT, MANIFEST_V2, OCTET, USER_AGENT

log = logging.getLogger(__name__)
T = TypeVar("T")
Body = bytes | Callable[[], AsyncIterator[bytes]] | None
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class TransferOptions:
    """How pulls and pushes talk to registries (a value object built from ``RegistrySettings``)."""

    upstream: str = "https://registry.ollama.ai"
    min_part: int = 100_000_000
    max_part: int = 1_000_000_000
    streams: int = 16
    retries: int = 6
    backoff: float = 1.0
    stall: float = 30.0
    key_file: Path | None = None
    via: str = ""  # this registry process's id, sent as X-Caravan-Via (a mirror loop back to itself is refused)

    @classmethod
    def from_settings(cls, settings: RegistrySettings, via: str = "") -> TransferOptions:
        return cls(upstream=settings.upstream, min_part=settings.pull_min_part, max_part=settings.pull_max_part,
                   streams=settings.transfer_streams, retries=max(1, settings.transfer_retries),
                   backoff=settings.transfer_backoff, stall=settings.transfer_stall, key_file=settings.registry_key,
                   via=via)


class Retryable(UpstreamError):
    """A failure worth another attempt (connection trouble, 429, 5xx)."""


def registry_base(name: ModelName, insecure: bool, upstream: str) -> str:
    """The base URL that serves ``name``: the upstream for default-host names, else the name's own host."""
    if name.scheme == "http" and not insecure:
        raise BadRequest("insecure protocol http")
    if name.host == DEFAULT_HOST and upstream:
        return upstream.rstrip("/")
    return f"{'http' if insecure else 'https'}://{name.host}"


def describe(response: httpx.Response) -> str:
    """``<status>: <body>`` as Ollama reports a registry's error (body cut short)."""
    try:
        body = response.text.strip()
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        body = ""
    return f"{response.status_code}: {body[:500]}" if body else str(response.status_code)


def same_host(a: str, b: str) -> bool:
    return (urlsplit(a).hostname or "").lower() == (urlsplit(b).hostname or "").lower()


class RemoteRegistry:
    """One registry base URL; holds the bearer token it was given."""

    def __init__(self, base_url: str, options: TransferOptions,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.options = options
        headers = {"User-Agent": USER_AGENT, **({"X-Caravan-Via": options.via} if options.via else {})}
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, read=options.stall), transport=transport,
                                      headers=headers, follow_redirects=False)
        self.signer = load_signer(options.key_file)
        self.token: str | None = None
        self.fast = transport is None  # an injected transport (tests) must see every request

    @classmethod
    def for_name(cls, name: ModelName, insecure: bool, options: TransferOptions,
                 transport: httpx.AsyncBaseTransport | None = None) -> RemoteRegistry:
        return cls(registry_base(name, insecure, options.upstream), options, transport)

    async def aclose(self) -> None:
        await self.http.aclose()

    def url(self, repo: str, *path: str) -> str:
        return "/".join([self.base, "v2", repo, *path])

    # -- one request, auth, retries ------------------------------------------------------------------
    def _auth(self, url: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token and same_host(url, self.base) else {}

    async def _send_once(self, method: str, url: str, headers: dict[str, str], body: Body,
                         stream: bool) -> httpx.Response:
        content = body() if callable(body) else body
        request = self.http.build_request(method, url, headers={**self._auth(url), **headers}, content=content)
        try:
            return await self.http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise Retryable(f"{method} {url}: {exc or type(exc).__name__}") from None

    async def send(self, method: str, url: str, *, headers: dict[str, str] | None = None, body: Body = None,
                   stream: bool = False) -> httpx.Response:
        """One request; a bearer challenge is answered once (a second 401 is returned to the caller)."""
        response = await self._send_once(method, url, headers or {}, body, stream)
        if response.status_code != 401 or not same_host(url, self.base):
            return response
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return response
        await response.aclose()
        self.token = await fetch_token(self.http, challenge, urlsplit(self.base).hostname or "", self.signer)
        return await self._send_once(method, url, headers or {}, body, stream)

    async def retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``operation`` until it stops raising :class:`Retryable`, sleeping backoff × 2^attempt."""
        for attempt in range(self.options.retries):
            try:
                return await operation()
            except Retryable as exc:
                if attempt + 1 >= self.options.retries:
                    raise UpstreamError(f"{what}: {exc.message}") from None
                delay = self.options.backoff * 2**attempt
                log.info("%s failed (%s); retrying in %.2fs", what, exc.message, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      body: Body = None, what: str = "") -> httpx.Response:
        """A small request, read in full, retried on connection errors, 429 and 5xx (errors say ``what``)."""

        async def once() -> httpx.Response:
            response = await self.send(method, url, headers=headers, body=body)
            if response.status_code == 429 or response.status_code >= 500:
                raise Retryable(describe(response))
            return response

        return await self.retry(once, what or f"{method} {url}")

    # -- pull --------------------------------------------------------------------------------------------
    async def get_manifest(self, repo: str, tag: str) -> bytes:
        """The manifest bytes exactly as served."""
        what = "pull model manifest"
        response = await self.request("GET", self.url(repo, "manifests", tag), headers={"Accept": MANIFEST_ACCEPT},
                                      what=what)
        check(response, what)
        return response.content

    async def has_blob(self, repo: str, digest: str) -> bool:
        """HEAD the blob: present (2xx or a redirect to it) or absent (404)."""
        response = await self.request("HEAD", self.url(repo, "blobs", digest))
        if response.status_code == 404:
            return False
        if response.is_success or response.is_redirect:
            return True
        check(response, f"check blob {digest}")
        return False

    async def locate_blob(self, repo: str, digest: str) -> str:
        """The direct URL of a blob: the first cross-host redirect's target, or the blob URL itself (200)."""
        return await self.retry(lambda: self._locate(self.url(repo, "blobs", digest), digest), f"locate {digest}")

    async def _locate(self, url: str, digest: str) -> str:
        for _ in range(10):
            response = await self.send("GET", url, stream=True)
            await response.aclose()
            if response.is_redirect:
                target = urljoin(url, response.headers.get("location", ""))
                if not same_host(target, url):
                    return target
                url = target
            elif response.status_code in (200, 206):
                return url
            elif response.status_code == 429 or response.status_code >= 500:
                raise Retryable(str(response.status_code))
            else:
                check(response, f"pull {digest}")
        raise UpstreamError(f"pull {digest}: too many redirects")

    async def iter_range(self, url: str, start: int, stop: int) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, stop)`` of a direct URL as they arrive; :class:`Retryable` on transient failures.

        Plain asyncio streams when they can do it (registry/rangefetch.py), else httpx.
        """
        if self.fast and rangefetch.usable(url):
            headers = {"User-Agent": USER_AGENT, **self._auth(url)}
            try:
                async with aclosing(rangefetch.stream_range(url, start, stop, headers, self.options.stall)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except rangefetch.Failed as exc:
                raise Retryable(str(exc)) from None
            except rangefetch.Unsupported:
                pass  # raised before the first byte: the general path below
        async with self.open_range(url, start, stop) as response:
            async for chunk in response.aiter_bytes():
                yield chunk

    @asynccontextmanager
    async def open_range(self, url: str, start: int, stop: int) -> AsyncIterator[httpx.Response]:
        """Stream bytes ``[start, stop)`` of a direct URL; raises :class:`Retryable` on transient failures."""
        response = await self.send("GET", url, headers={"Range": f"bytes={start}-{stop - 1}"}, stream=True)
        try:
            if response.status_code == 200 and start != 0:
                raise UpstreamError(f"GET {url}: the server ignored the Range header")
            if response.status_code not in (200, 206):
                await response.aread()
                raise Retryable(describe(response))
            yield response
        finally:
            await response.aclose()

    # -- push --------------------------------------------------------------------------------------------
    async def start_upload(self, repo: str, digest: str, mount_from: str | None) -> str | None:
        """POST uploads/: ``None`` when the blob was mounted from ``mount_from``, else the upload URL."""
        url = self.url(repo, "blobs", "uploads") + "/"
        if mount_from:
            url += f"?mount={digest}&from={mount_from}"
        response = await self.request("POST", url, headers={"Content-Length": "0"})
        if response.status_code == 201:
            return None
        check(response, f"upload {digest}")
        return self._next(url, response)

    def _next(self, url: str, response: httpx.Response) -> str:
        location = response.headers.get("docker-upload-location") or response.headers.get("location")
        if not location:
            raise UpstreamError(f"{response.request.method} {url}: no Location header in response")
        return urljoin(url, location)

    async def upload_part(self, url: str, path: Path, offset: int, size: int) -> str:
        """PATCH one part; a 307 re-sends it with PUT to the storage it names. Returns the next upload URL."""
        headers = {"Content-Type": OCTET, "Content-Length": str(size), "X-Redirect-Uploads": "1",
                   "Content-Range": f"{offset}-{offset + size - 1}"}
        response = await self.request("PATCH", url, headers=headers, body=lambda: read_range(path, offset, size))
        if response.status_code == 307:
            target = urljoin(url, response.headers.get("location", ""))
            put = await self.request("PUT", target, headers={"Content-Type": OCTET, "Content-Length": str(size)},
                                     body=lambda: read_range(path, offset, size))
            check(put, f"upload part to {target}")
        else:
            check(response, f"upload part {offset}-{offset + size - 1}")
        return self._next(url, response)

    async def commit_upload(self, url: str, digest: str) -> None:
        target = str(httpx.URL(url).copy_merge_params({"digest": digest}))
        response = await self.request("PUT", target, headers={"Content-Type": OCTET, "Content-Length": "0"})
        check(response, f"commit upload {digest}")

    async def put_manifest(self, repo: str, tag: str, raw: bytes, media_type: str = MANIFEST_V2) -> None:
        response = await self.request("PUT", self.url(repo, "manifests", tag), headers={"Content-Type": media_type},
                                      body=raw)
        check(response, "push manifest")


def check(response: httpx.Response, what: str) -> None:
    """Raise the error a failed response means (404 → Ollama's ``file does not exist``)."""
    if response.is_success:
        return
    if response.status_code == 404:
        raise NotFound(f"{what}: file does not exist")
    if response.status_code in (401, 403):
        raise Unauthorized(f"{what}: unauthorized: access denied ({describe(response)})")
    raise UpstreamError(f"{what}: {describe(response)}")


async def read_range(path: Path, offset: int, size: int) -> AsyncIterator[bytes]:
    """File bytes ``[offset, offset+size)`` in 1 MiB chunks (a fresh iterator per attempt)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        left = size
        while left > 0:
            chunk = handle.read(min(READ_CHUNK, left))
            if not chunk:
                raise CaravanError(f"{path} is shorter than expected")
            left -= len(chunk)
            yield chunk
