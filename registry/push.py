"""Push a stored model to a registry (ollama-api.md §3.15, §7.4), reporting Ollama's progress objects::

    retrieving manifest → pushing <12hex> (per layer, then the config) → pushing manifest → success

A blob the registry already has (HEAD 200) is reported complete at once; a layer with ``from`` is offered
for a cross-repository mount first. Otherwise the blob goes up in parts (total/64 clamped to [min, max],
as Ollama sizes upload parts), each a PATCH chained through the Location the registry returns, then the
``PUT ?digest=`` commit. The manifest bytes are pushed exactly as stored, so its digest is the same there.
"""

from __future__ import annotations

import contextlib

from caravan.errors import CaravanError, NotFound
from caravan.names import ModelName
from caravan.wire.transfer import SUCCESS, progress
from registry.client import RemoteRegistry
from registry.oci import MANIFEST_V2, plan_parts, short
from registry.pull import Emit, Transfers
from registry.store import Layer, Store

UPLOAD_PARTS = 64


async def push(transfers: Transfers, name: ModelName, insecure: bool, emit: Emit) -> None:
    """Push the stored model ``name`` to the registry its name points at."""
    await emit(progress("retrieving manifest"))
    try:
        stored = transfers.store.read_manifest(name)
    except NotFound:
        await emit(progress("couldn't retrieve manifest"))
        raise
    registry = RemoteRegistry.for_name(stored.name, insecure, transfers.options, transfers.transport)
    try:
        with transfers.store.pinned(stored.manifest.all_digests()):
            for layer in [*stored.manifest.layers, stored.manifest.config]:
                await _push_layer(transfers, registry, stored.name, layer, emit)
            await emit(progress("pushing manifest"))
            media = stored.manifest.media_type or MANIFEST_V2
            await registry.put_manifest(stored.name.repository, stored.name.tag, stored.raw, media)
    finally:
        await registry.aclose()
    await emit(progress(SUCCESS))


def mount_source(layer: Layer) -> str | None:
    """The repository a layer's ``from`` names (for ``?mount=&from=``)."""
    if not layer.from_:
        return None
    with contextlib.suppress(CaravanError):
        return ModelName.parse(layer.from_).repository
    return None


async def _push_layer(transfers: Transfers, registry: RemoteRegistry, name: ModelName, layer: Layer,
                      emit: Emit) -> None:
    status = f"pushing {short(layer.digest)}"
    done = progress(status, layer.digest, layer.size, layer.size)
    if await registry.has_blob(name.repository, layer.digest):
        await emit(done)
        return
    url = await registry.start_upload(name.repository, layer.digest, mount_source(layer))
    if url is not None:
        await _upload(transfers.store, registry, url, layer, status, emit)
    await emit(done)


async def _upload(store: Store, registry: RemoteRegistry, url: str, layer: Layer, status: str, emit: Emit) -> None:
    """PATCH the parts in order (each answer names the next URL), then commit."""
    path = store.blob_path(layer.digest)
    options = registry.options
    await emit(progress(status, layer.digest, layer.size))
    parts = plan_parts(layer.size, options.min_part, options.max_part, UPLOAD_PARTS)
    for part in parts:
        url = await registry.upload_part(url, path, part.offset, part.size)
        if part is not parts[-1]:
            await emit(progress(status, layer.digest, layer.size, part.stop))
    await registry.commit_upload(url, layer.digest)
