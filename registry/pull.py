"""Pull a model from a registry into the store (ollama-api.md §3.15, §7), reporting Ollama's progress objects::

    pulling manifest → pulling <12hex> (per layer, then the config; cached blobs once, complete)
    → verifying sha256 digest → writing manifest → [removing unused layers] → success

Each blob is verified before it is renamed into place (registry/download.py); the manifest bytes are written
verbatim, atomically, only after every blob is there. Every digest is pinned against garbage collection
before it is written or relied on. A digest mismatch rolls the pull back: the bad blob is already gone, and
the blobs this pull fetched that no manifest references are removed too, so a failed pull leaves the store
as it was. Other failures keep the partial downloads, so the next pull resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import ValidationError

from caravan.errors import DigestMismatch, UpstreamError
from caravan.names import ModelName
from caravan.wire.transfer import SUCCESS, progress
from registry import gc
from registry.client import RemoteRegistry, TransferOptions
from registry.download import BlobDownload, Downloads
from registry.metrics import RegistryMetrics
from registry.oci import short
from registry.store import Layer, Manifest, Pins, Store

Emit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Transfers:
    """What pulls and pushes of one registry process share."""

    store: Store
    options: TransferOptions
    downloads: Downloads = field(default_factory=Downloads)
    progress_interval: float = 0.1
    transport: httpx.AsyncBaseTransport | None = None  # tests: an in-process registry
    metrics: RegistryMetrics | None = None

    @contextlib.contextmanager
    def measured(self) -> Iterator[None]:
        """Count and time one pull (registry/metrics.py), when metrics are attached."""
        with self.metrics.pulling() if self.metrics else contextlib.nullcontext():
            yield

    def on_bytes(self, count: int) -> None:
        if self.metrics is not None:
            self.metrics.pulled_bytes(count)


def parse_manifest(raw: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise UpstreamError(f"pull model manifest: invalid manifest: {exc.errors()[0].get('msg')}") from None


async def pull(transfers: Transfers, name: ModelName, insecure: bool, emit: Emit) -> None:
    """Pull ``name`` (its own host, or the upstream for default-host names) into the store."""
    with transfers.measured():
        await _pull(transfers, name, insecure, emit)


async def _pull(transfers: Transfers, name: ModelName, insecure: bool, emit: Emit) -> None:
    registry = RemoteRegistry.for_name(name, insecure, transfers.options, transfers.transport)
    fetched: list[str] = []
    try:
        await emit(progress("pulling manifest"))
        raw = await registry.get_manifest(name.repository, name.tag)
        manifest = parse_manifest(raw)
        with transfers.store.pinned() as pins:
            for layer in [*manifest.layers, manifest.config]:
                if await _pull_layer(transfers, registry, name, layer, pins, emit):
                    fetched.append(layer.digest)
            await emit(progress("verifying sha256 digest"))
            await _write_manifest(transfers.store, name, manifest, raw, emit)
    except DigestMismatch:
        await asyncio.to_thread(gc.collect, transfers.store, fetched)
        raise
    finally:
        await registry.aclose()
    await emit(progress(SUCCESS))


async def _pull_layer(transfers: Transfers, registry: RemoteRegistry, name: ModelName, layer: Layer,
                      pins: Pins, emit: Emit) -> bool:
    """Make sure one blob is in the store; True when this pull downloaded it."""
    status = f"pulling {short(layer.digest)}"
    await asyncio.to_thread(pins.add, layer.digest)
    if transfers.store.has_blob(layer.digest):
        await emit(progress(status, layer.digest, layer.size, layer.size))
        return False
    download = BlobDownload(transfers.store, layer.digest, layer.size, transfers.options, transfers.on_bytes)
    download, task = transfers.downloads.start(download, registry, name.repository)
    last: dict[str, Any] = {}
    while True:
        done, _ = await asyncio.wait({task}, timeout=transfers.progress_interval)
        if done:
            task.result()
        current = progress(status, layer.digest, download.total, download.completed)
        if current != last:
            await emit(current)
            last = current
        if done:
            return True


async def _write_manifest(store: Store, name: ModelName, manifest: Manifest, raw: bytes, emit: Emit) -> None:
    """Write the manifest bytes verbatim; then drop the blobs only the replaced manifest used."""
    stale = gc.previous_digests(store, name) - manifest.all_digests()
    await emit(progress("writing manifest"))
    store.write_manifest(store.resolve(name), raw)
    if stale:
        await emit(progress("removing unused layers"))
        await asyncio.to_thread(gc.collect, store, stale)
