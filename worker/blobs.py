"""Model weights for a worker: the shared store when mounted, else fetched by digest from the registry.

A fetched blob is streamed to a temp file while hashing, verified against its digest, then renamed into
the local cache, so a broken download never leaves a partial file under a digest name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import httpx

from caravan.errors import DigestMismatch, UpstreamError
from caravan.names import parse_digest
from caravan.registry_auth import internal_headers


class BlobCache:
    """Find or fetch a blob; ``models`` is a shared Ollama store (optional), ``cache`` a local directory."""

    def __init__(self, registry_url: str, cache: Path, models: Path | None = None, token: str = "") -> None:
        self.registry_url = registry_url.rstrip("/")
        self.headers = internal_headers(token)
        self.cache = cache
        self.models = models

    def _name(self, digest: str) -> str:
        return parse_digest(digest).replace(":", "-")

    def local(self, digest: str) -> Path | None:
        for root in (self.models / "blobs" if self.models else None, self.cache):
            if root is not None and (root / self._name(digest)).is_file():
                return root / self._name(digest)
        return None

    async def path(self, digest: str) -> Path:
        """Local path of ``digest``, downloading it into the cache first when needed."""
        found = self.local(digest)
        return found if found is not None else await self._fetch(digest)

    async def _fetch(self, digest: str) -> Path:
        self.cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                got = await self._download(digest, handle)
            if got != parse_digest(digest):
                raise DigestMismatch(f"digest mismatch for {digest}: got {got}")
            final = self.cache / self._name(digest)
            os.replace(tmp, final)
            return final
        finally:
            Path(tmp).unlink(missing_ok=True)  # noqa: ASYNC240 (metadata only)

    async def _download(self, digest: str, handle: BinaryIO) -> str:
        """Stream the blob from the registry into ``handle``; returns the digest of what arrived."""
        hasher = hashlib.sha256()
        url = f"{self.registry_url}/internal/blobs/{parse_digest(digest)}"
        timeout = httpx.Timeout(30, read=300)
        async with httpx.AsyncClient(timeout=timeout, headers=self.headers) as client, client.stream("GET", url) as got:
            if got.status_code != 200:
                raise UpstreamError(f"registry answered {got.status_code} for blob {digest}")
            async for chunk in got.aiter_bytes(1 << 20):
                hasher.update(chunk)
                handle.write(chunk)
        return f"sha256:{hasher.hexdigest()}"
