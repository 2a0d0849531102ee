"""The model store, in Ollama's on-disk layout (ollama-api.md §6), so ``~/.ollama/models`` works as-is::

    <root>/
      manifests/<host>/<namespace>/<model>/<tag>   JSON manifest (Docker distribution v2 style)
      blobs/sha256-<64 hex>                        content-addressed layers and config blobs
      blobs/sha256-<64 hex>-partial[-N]            in-progress downloads (registry client)
      blobs/.tmp-<random>                          blob being written and hashed (never a valid digest)

Blobs are written to a temp file while hashing, verified, then renamed; manifests are written to a temp
file and renamed, so a failed write leaves nothing behind. Names are validated by ``ModelName`` before any
path is built, so no name can reach outside ``<root>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from caravan.errors import DigestMismatch, NotFound
from caravan.names import ModelName, parse_digest

MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA = "application/vnd.ollama.image."
CHUNK = 1 << 20


class Layer(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int
    from_: str | None = Field(default=None, alias="from")
    name: str | None = None

    @property
    def kind(self) -> str:
        """``model``, ``params``, ``template``... (the media type's last part)."""
        return self.media_type.removeprefix(LAYER_MEDIA)


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    schema_version: int = Field(2, alias="schemaVersion")
    media_type: str = Field(MANIFEST_MEDIA, alias="mediaType")
    config: Layer
    layers: list[Layer]

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    def layer(self, kind: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.kind == kind), None)

    def all_digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class StoredManifest:
    name: ModelName
    manifest: Manifest
    raw: bytes
    mtime: float

    @property
    def digest(self) -> str:
        """Identity of a model: sha256 of the manifest bytes (hex, no prefix)."""
        return hashlib.sha256(self.raw).hexdigest()


class Store:
    """Blobs and manifests under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    # -- blobs ---------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / parse_digest(digest).replace(":", "-")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        if not path.is_file():
            raise NotFound(f"blob {digest} not found")
        return path.read_bytes()

    def write_blob_bytes(self, data: bytes, expected: str | None = None) -> tuple[str, int]:
        return self.write_blob_chunks([data], expected)

    def write_blob_chunks(self, chunks: Iterable[bytes], expected: str | None = None) -> tuple[str, int]:
        """Hash while writing to a temp file; verify ``expected``; rename into place."""
        with self._temp_blob() as (handle, tmp):
            hasher, size = hashlib.sha256(), 0
            for chunk in chunks:
                hasher.update(chunk)
                handle.write(chunk)
                size += len(chunk)
            return self._commit_blob(handle, tmp, f"sha256:{hasher.hexdigest()}", size, expected)

    async def write_blob_stream(self, chunks: AsyncIterable[bytes], expected: str | None = None) -> tuple[str, int]:
        """Async variant of :meth:`write_blob_chunks` (request bodies, downloads)."""
        with self._temp_blob() as (handle, tmp):
            hasher, size = hashlib.sha256(), 0
            async for chunk in chunks:
                hasher.update(chunk)
                handle.write(chunk)
                size += len(chunk)
            return self._commit_blob(handle, tmp, f"sha256:{hasher.hexdigest()}", size, expected)

    def import_file(self, path: Path) -> tuple[str, int]:
        """Copy a local file into the store as a blob (skips the copy when the blob exists)."""
        digest = file_digest(path)
        if not self.has_blob(digest):
            with path.open("rb") as handle:
                self.write_blob_chunks(iter(lambda: handle.read(CHUNK), b""), digest)
        return digest, path.stat().st_size

    @contextlib.contextmanager
    def _temp_blob(self) -> Iterator[tuple[tempfile._TemporaryFileWrapper[bytes], Path]]:
        handle = tempfile.NamedTemporaryFile(dir=self.blobs, prefix=".tmp-", delete=False)  # noqa: SIM115
        tmp = Path(handle.name)
        try:
            yield handle, tmp
        finally:
            handle.close()
            tmp.unlink(missing_ok=True)

    def _commit_blob(self, handle: object, tmp: Path, digest: str, size: int, expected: str | None) -> tuple[str, int]:
        if expected is not None and parse_digest(expected) != digest:
            raise DigestMismatch(f'digest mismatch, expected "{parse_digest(expected)}", got "{digest}"')
        handle.close()  # type: ignore[attr-defined]
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.blob_path(digest))
        return digest, size

    # -- manifests -----------------------------------------------------------------------------------
    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts())

    def resolve(self, name: ModelName) -> ModelName:
        """Replace each part by the spelling of an existing manifest that matches case-insensitively."""
        if self.manifest_path(name).is_file():
            return name
        wanted = [part.lower() for part in name.parts()]
        for existing in self.list_names():
            if [part.lower() for part in existing.parts()] == wanted:
                return existing
        return name

    def read_manifest(self, name: ModelName) -> StoredManifest:
        resolved = self.resolve(name)
        path = self.manifest_path(resolved)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"model '{name.display}' not found") from None
        return StoredManifest(resolved, Manifest.model_validate_json(raw), raw, mtime)

    def write_manifest(self, name: ModelName, raw: bytes) -> bool:
        """Write manifest bytes atomically; returns False when identical bytes were already there."""
        path = self.manifest_path(name)
        if path.is_file() and path.read_bytes() == raw:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(raw)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def list_names(self) -> list[ModelName]:
        names = []
        for path in self.manifests.glob("*/*/*/*"):
            if path.is_file() and not path.name.startswith("."):
                host, namespace, model, tag = path.relative_to(self.manifests).parts
                name = ModelName(host=host, namespace=namespace, model=model, tag=tag)
                if name.is_valid():
                    names.append(name)
        return names

    def list_manifests(self) -> list[StoredManifest]:
        """Every readable manifest, newest first; unreadable ones are skipped."""
        found = []
        for name in self.list_names():
            with contextlib.suppress(Exception):
                found.append(self.read_manifest(name))
        return sorted(found, key=lambda item: item.mtime, reverse=True)


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"
