from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from caravan.errors import DigestMismatch, NotFound
from caravan.names import ModelName
from registry.store import Store


def test_blob_written_atomically_and_verified(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"hello"
    digest, size = store.write_blob_bytes(data, "sha256:" + hashlib.sha256(data).hexdigest())
    assert size == 5 and store.read_blob(digest) == data
    assert store.blob_path(digest).name == "sha256-" + hashlib.sha256(data).hexdigest()


def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        store.write_blob_bytes(b"abc", "sha256:" + "0" * 64)
    assert list(store.blobs.iterdir()) == []


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def chunks():  # type: ignore[no-untyped-def]
        yield b"part"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write_blob_chunks(chunks())
    assert list(store.blobs.iterdir()) == []


def test_manifest_round_trip_and_case_insensitive_lookup(tmp_path: Path) -> None:
    store = Store(tmp_path)
    name = ModelName.parse("MyModel:Tag")
    raw = json.dumps({"schemaVersion": 2, "mediaType": "m", "config": {"mediaType": "c", "digest": "sha256:" + "1" * 64,
                      "size": 1}, "layers": []}).encode()
    assert store.write_manifest(name, raw) is True
    assert store.write_manifest(name, raw) is False
    found = store.read_manifest(ModelName.parse("mymodel:tag"))
    assert found.name.display == "MyModel:Tag" and found.raw == raw
    assert found.digest == hashlib.sha256(raw).hexdigest()
    assert (tmp_path / "manifests/registry.ollama.ai/library/MyModel/Tag").is_file()


def test_missing_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="model 'x:latest' not found"):
        Store(tmp_path).read_manifest(ModelName.parse("x"))


def test_manifest_changes_are_announced_to_gateways(tmp_path: Path, redis_url: str) -> None:
    """Written (not rewritten unchanged) and deleted manifests publish on caravan:models (registry.notify)."""
    import redis

    from caravan import keys
    from registry.notify import ModelNotifier

    store = Store(tmp_path)
    store.on_change = ModelNotifier(redis_url)
    listener = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(keys.MODELS_CHANNEL)
    listener.get_message(timeout=5)  # the subscription is confirmed before anything changes
    name = ModelName.parse("announced:latest")
    raw = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    heard = []
    for change in (lambda: store.write_manifest(name, raw), lambda: store.write_manifest(name, raw),
                   lambda: store.delete_manifest(name)):
        change()
        heard.append(listener.get_message(timeout=0.5))
    assert [m and m["data"] for m in heard] == [b"changed", None, b"changed"]
    listener.close()
