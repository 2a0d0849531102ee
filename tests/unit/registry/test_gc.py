"""Garbage collection and pins: what a sweep deletes, and what it must never delete."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from caravan.errors import NotFound
from caravan.names import ModelName
from registry.create import CreateRequest, plan_create, run_create
from registry.gc import collect, remove_model
from registry.importer import build_manifest, text_layer
from registry.store import Store


def make_model(store: Store, name: str, *texts: bytes) -> set[str]:
    """A model whose layers are ``texts`` (no GGUF needed for GC); returns every digest it references."""
    layers = [text_layer(store, "model" if i == 0 else "system", text) for i, text in enumerate(texts)]
    manifest = build_manifest(store, b'{"model_format":"gguf"}', layers)
    store.write_manifest(ModelName.parse(name), manifest.to_bytes())
    return manifest.all_digests()


def age(store: Store, digest: str, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(store.blob_path(digest), (past, past))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_delete_removes_only_blobs_nothing_else_references(store: Store) -> None:
    kept = make_model(store, "keep", b"weights", b"keep system")
    gone = make_model(store, "gone", b"weights", b"gone system")
    remove_model(store, ModelName.parse("gone"))
    assert all(store.has_blob(digest) for digest in kept)
    assert [store.has_blob(digest) for digest in sorted(gone - kept)] == [False]
    with pytest.raises(NotFound):
        store.read_manifest(ModelName.parse("gone"))


def test_pinned_blob_survives_delete(store: Store) -> None:
    digests = make_model(store, "only", b"weights", b"system")
    with store.pinned(digests):
        remove_model(store, ModelName.parse("only"))
        assert all(store.has_blob(digest) for digest in digests)
    assert sorted(collect(store, digests)) == sorted(digests)
    assert not any(store.has_blob(digest) for digest in digests)


def test_pins_count_per_holder(store: Store) -> None:
    digest = next(iter(make_model(store, "m", b"w")))
    with store.pinned([digest]):
        with store.pinned([digest]):
            pass
        assert digest in store.pinned_digests()
    assert digest not in store.pinned_digests()


def test_delete_during_a_pinned_create_keeps_what_the_create_uses(store: Store) -> None:
    base = make_model(store, "base", b"weights", b"base system")
    body = CreateRequest.model_validate({"model": "child", "from": "base", "system": "child system"})
    progress = run_create(store, plan_create(store, body))
    statuses = [next(progress)["status"]]  # the create now holds its pins; its manifest is not written yet
    remove_model(store, ModelName.parse("base"))
    statuses += [item["status"] for item in progress]
    assert statuses[-1] == "success"
    child = store.read_manifest(ModelName.parse("child")).manifest
    assert all(store.has_blob(digest) for digest in child.all_digests())
    assert child.layers[0].digest in base and store.pinned_digests() == frozenset()


def test_unreferenced_blobs_wait_for_the_grace_period(store: Store) -> None:
    make_model(store, "m", b"weights")
    fresh, _ = store.write_blob_bytes(b"uploaded for a create that has not started")
    old, _ = store.write_blob_bytes(b"abandoned long ago")
    age(store, old, 7200)
    assert collect(store) == [old]
    assert store.has_blob(fresh)
    assert collect(store, [fresh]) == [fresh]


def test_partial_and_temp_files_are_never_touched(store: Store) -> None:
    make_model(store, "m", b"weights")
    odd = [store.blobs / ("sha256-" + "a" * 64 + "-partial"), store.blobs / ".tmp-upload", store.blobs / "junk"]
    for path in odd:
        path.write_bytes(b"x")
        os.utime(path, (0, 0))
    collect(store, grace=0)
    assert all(path.exists() for path in odd)


def test_unreadable_manifest_stops_the_sweep(store: Store) -> None:
    digests = make_model(store, "m", b"weights")
    broken = store.manifests / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    store.delete_manifest(ModelName.parse("m"))
    assert collect(store, digests) == []
    assert all(store.has_blob(digest) for digest in digests)


def test_delete_manifest_prunes_empty_directories_only(store: Store) -> None:
    make_model(store, "ns/a:1", b"w")
    make_model(store, "ns/a:2", b"w")
    store.delete_manifest(ModelName.parse("ns/a:1"))
    assert (store.manifests / "registry.ollama.ai" / "ns" / "a").is_dir()
    store.delete_manifest(ModelName.parse("ns/a:2"))
    assert not (store.manifests / "registry.ollama.ai").exists()
    assert store.manifests.is_dir()
