"""Caravan's ``/v2/`` (in-process, through httpx's ASGI transport), and our own push and pull against it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from caravan.names import ModelName
from caravan.settings import RegistrySettings
from registry.app import create_app
from registry.client import TransferOptions
from registry.pull import Transfers, pull
from registry.push import push
from registry.routes.distribution import redirect_host
from registry.store import CONFIG_MEDIA, LAYER_MEDIA, Layer, Manifest, Store

BASE = "http://caravan.test"
OPTIONS = TransferOptions(upstream="", min_part=100, max_part=1000, streams=4, retries=2, backoff=0.0)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def small_model(store: Store, name: str, params: bytes = b'{"temperature":0.5}') -> bytes:
    """A model of three blobs; the manifest is indented, to show bytes travel verbatim."""
    blobs = {"model": os.urandom(1500), "params": params, "config": b'{"model_format":"gguf"}'}
    for data in blobs.values():
        store.write_blob_bytes(data)
    layers = [Layer(media_type=LAYER_MEDIA + kind, digest=sha(blobs[kind]), size=len(blobs[kind]))
              for kind in ("model", "params")]
    config = Layer(media_type=CONFIG_MEDIA, digest=sha(blobs["config"]), size=len(blobs["config"]))
    manifest = Manifest(config=config, layers=layers)
    raw = json.dumps(json.loads(manifest.to_bytes()), indent=1).encode()
    store.write_manifest(ModelName.parse(name), raw)
    return raw


@pytest.fixture
def server(tmp_path: Path) -> Store:
    return Store(tmp_path / "server")


@pytest.fixture
def transport(server: Store) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(RegistrySettings(models=server.root, pull_through=False)))


@pytest.fixture
async def client(transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield http


# -- reading ---------------------------------------------------------------------------------------------------------
async def test_base_catalog_and_tags(server: Store, client: httpx.AsyncClient) -> None:
    small_model(server, "team/m:v1")
    small_model(server, "team/m:v2")
    small_model(server, "localhost:5000/ns/other:x")
    assert (await client.get("/v2/")).json() == {}
    assert (await client.get("/v2/_catalog")).json() == {"repositories": ["localhost:5000/ns/other", "team/m"]}
    assert (await client.get("/v2/team/m/tags/list")).json() == {"name": "team/m", "tags": ["v1", "v2"]}
    missing = await client.get("/v2/team/nope/tags/list")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_manifest_by_tag_and_digest(server: Store, client: httpx.AsyncClient) -> None:
    raw = small_model(server, "localhost:5000/ns/m:v1")
    reply = await client.get("/v2/localhost:5000/ns/m/manifests/v1")
    assert reply.content == raw and reply.headers["docker-content-digest"] == sha(raw)
    assert reply.headers["content-type"] == "application/vnd.docker.distribution.manifest.v2+json"
    head = await client.head("/v2/localhost:5000/ns/m/manifests/v1")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(raw))
    assert (await client.get(f"/v2/localhost:5000/ns/m/manifests/{sha(raw)}")).content == raw
    missing = await client.get("/v2/ns/m/manifests/v1")  # the default host's ns/m is another repository
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_blob_get_redirects_ranges_are_served(server: Store, client: httpx.AsyncClient) -> None:
    data = os.urandom(5000)
    digest, _ = server.write_blob_bytes(data)
    head = await client.head(f"/v2/team/m/blobs/{digest}")
    assert head.status_code == 200 and head.headers["content-length"] == "5000"
    moved = await client.get(f"/v2/team/m/blobs/{digest}")
    assert moved.status_code == 307 and moved.headers["location"] == f"http://caravan.test./v2/_blobs/{digest}"
    part = await client.get(f"/v2/team/m/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert (await client.get(f"/v2/_blobs/{digest}")).content == data
    assert (await client.get(f"/v2/team/m/blobs/{sha(b'x')}")).status_code == 404


def test_redirect_host_is_another_spelling_of_the_same_server() -> None:
    assert redirect_host("127.0.0.1:11435") == "localhost:11435"
    assert redirect_host("localhost:11435") == "127.0.0.1:11435"
    assert redirect_host("192.168.1.5:11435") == "[::ffff:192.168.1.5]:11435"
    assert redirect_host("mirror.lan:11435") == "mirror.lan.:11435"
    assert redirect_host("mirror.lan.") == "mirror.lan"
    assert redirect_host("[::1]:8080") == "127.0.0.1:8080"
    assert redirect_host("127.0.0.1:1", configured="blobs.lan:1") == "blobs.lan:1"


# -- writing ---------------------------------------------------------------------------------------------------------
async def test_chunked_upload_session(server: Store, client: httpx.AsyncClient) -> None:
    data = os.urandom(300)
    started = await client.post("/v2/team/m/blobs/uploads/")
    assert started.status_code == 202
    url = started.headers["location"]
    assert url.startswith("http://caravan.test/v2/team/m/blobs/uploads/"), "absolute: ollama cannot use a path"
    assert (await client.patch(url, content=data[:100], headers={"Content-Range": "0-99"})).status_code == 202
    resent = await client.patch(url, content=data[:100], headers={"Content-Range": "0-99"})  # a retried part
    assert resent.headers["range"] == "0-99"
    gap = await client.patch(url, content=data[200:], headers={"Content-Range": "200-299"})
    assert gap.status_code == 416
    await client.patch(url, content=data[100:200], headers={"Content-Range": "100-199"})
    committed = await client.put(url, params={"digest": sha(data)}, content=data[200:])
    assert committed.status_code == 201 and committed.headers["docker-content-digest"] == sha(data)
    assert server.read_blob(sha(data)) == data
    assert [p.name for p in server.blobs.iterdir()] == [server.blob_path(sha(data)).name]


async def test_upload_with_the_wrong_digest_is_refused(server: Store, client: httpx.AsyncClient) -> None:
    url = (await client.post("/v2/team/m/blobs/uploads/")).headers["location"]
    await client.patch(url, content=b"abc")
    reply = await client.put(url, params={"digest": sha(b"xyz")})
    assert reply.status_code == 400 and reply.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert list(server.blobs.iterdir()) == []
    assert (await client.get(url)).status_code == 404


async def test_monolithic_upload_and_mount(server: Store, client: httpx.AsyncClient) -> None:
    reply = await client.post("/v2/team/m/blobs/uploads/", params={"digest": sha(b"whole")}, content=b"whole")
    assert reply.status_code == 201 and server.read_blob(sha(b"whole")) == b"whole"
    mounted = await client.post("/v2/team/n/blobs/uploads/", params={"mount": sha(b"whole"), "from": "team/m"})
    assert mounted.status_code == 201
    fresh = await client.post("/v2/team/n/blobs/uploads/", params={"mount": sha(b"other"), "from": "team/m"})
    assert fresh.status_code == 202


async def test_manifest_put_needs_its_blobs(server: Store, client: httpx.AsyncClient, tmp_path: Path) -> None:
    other = Store(tmp_path / "other")
    raw = small_model(other, "x:y")
    headers = {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}
    refused = await client.put("/v2/localhost:5000/ns/m/manifests/v1", content=raw, headers=headers)
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    for digest in Manifest.model_validate_json(raw).all_digests():
        server.write_blob_bytes(other.read_blob(digest))
    stored = await client.put("/v2/localhost:5000/ns/m/manifests/v1", content=raw, headers=headers)
    assert stored.status_code == 201 and stored.headers["docker-content-digest"] == sha(raw)
    assert (server.root / "manifests/localhost:5000/ns/m/v1").read_bytes() == raw


# -- our client against our server -----------------------------------------------------------------------------------
async def test_push_then_pull_round_trip(server: Store, transport: httpx.ASGITransport, tmp_path: Path) -> None:
    source, target = Store(tmp_path / "source"), Store(tmp_path / "target")
    name = ModelName.parse("caravan.test/team/m:v1")
    raw = small_model(source, name.full)
    lines: list[dict[str, Any]] = []

    async def emit(event: dict[str, Any]) -> None:
        lines.append(event)

    await push(Transfers(source, OPTIONS, transport=transport), name, True, emit)
    assert [line["status"] for line in lines][-2:] == ["pushing manifest", "success"]
    assert server.read_manifest(ModelName.parse("team/m:v1")).raw == raw
    lines.clear()
    await pull(Transfers(target, OPTIONS, transport=transport), name, True, emit)
    assert [line["status"] for line in lines][-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert target.read_manifest(name).raw == raw
    for digest in Manifest.model_validate_json(raw).all_digests():
        assert target.read_blob(digest) == source.read_blob(digest)

    old_params = Manifest.model_validate_json(raw).layer("params")
    assert old_params is not None
    small_model(server, "team/m:v1", params=b'{"temperature":0.9}')  # a new version upstream
    lines.clear()
    await pull(Transfers(target, OPTIONS, transport=transport), name, True, emit)
    assert "removing unused layers" in [line["status"] for line in lines]
    assert not target.has_blob(old_params.digest)
