"""Garbage collection of blobs, and removing a model (``DELETE /api/delete``, ollama-api.md §3.14).

A sweep runs under ``store.gc_lock``: it reads every manifest, then deletes each complete blob that no manifest
references and no running operation has pinned (``Store.pinned``, see registry/store.py). ``-partial`` downloads
and temp files are never touched. Blobs that an operation just made unreferenced (the deleted model's, the
replaced manifest's) go at once; any other unreferenced blob only once it is older than ``GRACE_SECONDS`` (as
Ollama's startup prune), so a blob uploaded with ``POST /api/blobs`` for a create that has not started yet
survives. If any manifest cannot be read, nothing is deleted: its blobs might be among the candidates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from caravan.errors import InvalidName, NotFound
from caravan.names import ModelName
from registry.modelfile import go_quote
from registry.store import Manifest, Store

log = logging.getLogger(__name__)

GRACE_SECONDS = 3600.0


def referenced_digests(store: Store) -> set[str] | None:
    """Every digest some manifest references; ``None`` when a manifest is unreadable."""
    found: set[str] = set()
    for path in store.manifests.glob("*/*/*/*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            found |= Manifest.model_validate_json(path.read_bytes()).all_digests()
        except (OSError, ValueError):
            log.warning("unreadable manifest %s: garbage collection skipped", path)
            return None
    return found


def collect(store: Store, candidates: Iterable[str] = (), grace: float = GRACE_SECONDS) -> list[str]:
    """Delete unreferenced, unpinned blobs (``candidates`` at once, others after ``grace``); returns digests."""
    wanted = set(candidates)
    removed: list[str] = []
    with store.gc_lock:
        referenced = referenced_digests(store)
        if referenced is None:
            return removed
        keep = referenced | store.pinned_digests()
        for digest, path in list(store.blob_files()):
            if digest not in keep and (digest in wanted or _older_than(path, grace)) and store.delete_blob(digest):
                removed.append(digest)
    if removed:
        log.info("removed %d unreferenced blobs", len(removed))
    return removed


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def previous_digests(store: Store, name: ModelName) -> set[str]:
    """Digests the current manifest of ``name`` references (empty when there is none or it is unreadable)."""
    try:
        return store.read_manifest(name).manifest.all_digests()
    except (NotFound, ValueError):
        return set()


def replace_manifest(store: Store, name: ModelName, raw: bytes) -> list[str]:
    """Write ``name``'s manifest, then collect the blobs only its previous manifest used."""
    old = previous_digests(store, name)
    store.write_manifest(name, raw)
    return collect(store, old)


def remove_model(store: Store, name: ModelName) -> list[str]:
    """Delete model ``name`` (resolved case-insensitively) and the blobs nothing else references."""
    stored = store.read_manifest(name)
    store.delete_manifest(stored.name)
    return collect(store, stored.manifest.all_digests())


def delete_model(store: Store, raw: str) -> None:
    """``DELETE /api/delete``: Ollama's ``name "X" is invalid`` / ``model 'X' not found`` (X as given)."""
    try:
        name = ModelName.parse(raw)
    except InvalidName:
        raise InvalidName(f"name {go_quote(raw)} is invalid") from None
    try:
        remove_model(store, name)
    except NotFound:
        raise NotFound(f"model '{raw}' not found") from None
