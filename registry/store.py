"""The model store, in Ollama's on-disk layout (ollama-api.md §6), so ``~/.ollama/models`` works as-is::

    <root>/
      manifests/<host>/<namespace>/<model>/<tag>   JSON manifest (Docker distribution v2 style)
      blobs/sha256-<64 hex>                        content-addressed layers and config blobs
      blobs/sha256-<64 hex>-partial[-N]            in-progress downloads (registry client)
      blobs/.tmp-<random>                          blob being written and hashed (never a valid digest)

Blobs are written to a temp file while hashing, verified, then renamed; manifests are written to a temp
file and renamed, so a failed write leaves nothing behind. Names are validated by ``ModelName`` before any
path is built, so no name can reach outside ``<root>``.

Pins (for garbage collection, ``registry/gc.py``): a running create or pull calls ``with store.pinned() as pins``
and ``pins.add(digest)`` *before* it writes a blob or starts to rely on an existing one, and keeps the pin until
its manifest is written. A sweep holds ``store.gc_lock`` while it reads manifests and deletes blobs and skips
every pinned digest; ``pins.add`` takes the same lock, so a blob is never deleted between a pin and the manifest
that references it. After pinning an existing blob, check that it is still there (a sweep that ran just before
the pin may have removed it). ``pins.add`` may wait for a running sweep (short: a directory listing and the
manifests), so async code should expect that brief stall or call it from a thread. Pins are per process: only
what this registry process writes is protected.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from caravan.errors import DigestMismatch, NotFound
from caravan.names import ModelName, parse_digest

MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA = "application/vnd.ollama.image."
CHUNK = 1 << 20
_BLOB_NAME = re.compile(r"^sha256-[0-9a-f]{64}$")


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
        self.gc_lock = threading.RLock()
        self._pins: Counter[str] = Counter()
        self.on_change: Callable[[], None] = lambda: None  # a manifest was written or deleted

    # -- pins (see the module docstring) -------------------------------------------------------------
    @contextlib.contextmanager
    def pinned(self, digests: Iterable[str] = ()) -> Iterator[Pins]:
        """Protect ``digests`` (and whatever is added to the yielded :class:`Pins`) from GC until exit."""
        pins = Pins(self)
        try:
            pins.add(*digests)
            yield pins
        finally:
            pins.release()

    def pinned_digests(self) -> frozenset[str]:
        """Digests some running create or pull holds (hold ``gc_lock`` around the sweep that uses them)."""
        with self.gc_lock:
            return frozenset(digest for digest, count in self._pins.items() if count > 0)

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

    def blob_files(self) -> Iterator[tuple[str, Path]]:
        """``(digest, path)`` of every complete blob; ``-partial`` and temp files are never listed."""
        for path in self.blobs.iterdir():
            if _BLOB_NAME.match(path.name) and path.is_file():
                yield path.name.replace("-", ":", 1), path

    def delete_blob(self, digest: str) -> bool:
        """Remove one blob file; False when it was not there. Callers decide what is unreferenced (gc.py)."""
        try:
            self.blob_path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

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
        self.on_change()
        return True

    def delete_manifest(self, name: ModelName) -> None:
        """Remove the manifest of ``name`` (exact spelling) and the directories it leaves empty."""
        path = self.manifest_path(name)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"model '{name.display}' not found") from None
        self.on_change()
        for parent in path.parents:
            if parent == self.manifests or not parent.is_relative_to(self.manifests):
                break
            try:
                parent.rmdir()
            except OSError:
                break

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


class Pins:
    """The digests one operation holds against garbage collection (see :meth:`Store.pinned`)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._held: list[str] = []

    def add(self, *digests: str) -> None:
        """Pin more digests; waits while a sweep is running, so a pinned blob is never swept afterwards."""
        canonical = [parse_digest(digest) for digest in digests]
        with self._store.gc_lock:
            self._store._pins.update(canonical)
            self._held.extend(canonical)

    def release(self) -> None:
        """Drop every pin this holder took (done by :meth:`Store.pinned` on exit)."""
        with self._store.gc_lock:
            self._store._pins.subtract(self._held)
            self._store._pins = +self._store._pins
            self._held.clear()


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"
