"""The registry client and the resumable download against an in-process fake registry (httpx.MockTransport):
part sizing, bearer challenge (anonymous and Ed25519-signed), redirects, retries, resume, verification."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from caravan.errors import BadRequest, DigestMismatch, NotFound, Unauthorized, UpstreamError
from caravan.names import ModelName
from registry.auth import Challenge, parse_challenge, token_url
from registry.client import RemoteRegistry, TransferOptions, registry_base
from registry.download import BlobDownload, Downloads
from registry.oci import plan_parts
from registry.store import Store

MB = 1_000_000
REGISTRY = "http://reg.test"
OPTIONS = TransferOptions(upstream=REGISTRY, min_part=100, max_part=1000, streams=4, retries=3, backoff=0.0)
BLOB = os.urandom(1050)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


@dataclass
class Fake:
    """A registry on reg.test whose blobs redirect to cdn.test; records every request."""

    token: str | None = None
    manifest_status: list[int] = field(default_factory=list)  # statuses to answer before the real manifest
    serve_direct: bool = False  # blob GETs answered 200 by the registry itself
    drop_after: int | None = None  # first attempt of each ranged GET is cut after this many bytes
    corrupt: bool = False
    fail_from: int | None = None  # ranged GETs starting at or after this offset answer 503
    requests: list[httpx.Request] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = request.url
        if url.host == "cdn.test":
            return self.cdn(request)
        if url.path == "/token":
            return httpx.Response(200, json={"token": self.token})
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            challenge = f'Bearer realm="{REGISTRY}/token",service="reg",scope="repository:library/m:pull"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if "/manifests/" in url.path:
            if self.manifest_status:
                return httpx.Response(self.manifest_status.pop(0), text="boom")
            return httpx.Response(200, content=b'{"schemaVersion": 2}')
        if url.path.startswith("/v2/moved/"):
            return httpx.Response(307, headers={"Location": f"http://cdn.test/b/{DIGEST}?sig=1"})
        if url.path.endswith(f"/blobs/{DIGEST}"):
            return self.blob(request)
        return httpx.Response(404)

    def blob(self, request: httpx.Request) -> httpx.Response:
        if self.serve_direct:
            return self.cdn(request)
        return httpx.Response(302, headers={"Location": f"/v2/moved/blobs/{DIGEST}"})  # same host first

    def cdn(self, request: httpx.Request) -> httpx.Response:
        data = bytes([BLOB[0] ^ 1]) + BLOB[1:] if self.corrupt else BLOB
        header = request.headers.get("range")
        if header is None:
            return httpx.Response(200, content=data)
        start, end = (int(x) for x in header.removeprefix("bytes=").split("-"))
        if self.fail_from is not None and start >= self.fail_from:
            return httpx.Response(503)
        body = data[start : end + 1]
        if self.drop_after is not None and header not in self.dropped:
            self.dropped.add(header)
            return httpx.Response(206, content=_cut(body, self.drop_after))
        return httpx.Response(206, content=body)

    def ranges(self) -> list[str]:
        return [r.headers["range"] for r in self.requests if r.url.host == "cdn.test" and "range" in r.headers]


async def _cut(body: bytes, after: int) -> AsyncIterator[bytes]:
    yield body[:after]
    raise httpx.ReadError("connection dropped")


def remote(fake: Fake, options: TransferOptions = OPTIONS) -> RemoteRegistry:
    return RemoteRegistry(REGISTRY, options, transport=httpx.MockTransport(fake))


# -- sizing and names -----------------------------------------------------------------------------------------------
def test_parts_follow_ollamas_sizing() -> None:
    assert [p.size for p in plan_parts(98 * MB, 100 * MB, 1000 * MB)] == [98 * MB]
    sixteen = plan_parts(3200 * MB, 100 * MB, 1000 * MB)
    assert len(sixteen) == 16 and {p.size for p in sixteen} == {200 * MB}
    huge = plan_parts(40_000 * MB, 100 * MB, 1000 * MB)
    assert len(huge) == 40 and huge[-1].stop == 40_000 * MB
    small = plan_parts(1050, 100, 1000)
    assert [p.size for p in small] == [100] * 10 + [50]
    assert [p.offset for p in small] == [100 * i for i in range(11)]
    assert plan_parts(0, 100, 1000) == []


def test_default_host_names_go_to_the_upstream() -> None:
    up = "http://mirror.lan:11435"
    assert registry_base(ModelName.parse("llama3.2"), False, up) == up
    hf = ModelName.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")
    assert registry_base(hf, False, up) == "https://hf.co" and hf.repository == "bartowski/Llama-3.2-1B-Instruct-GGUF"
    assert registry_base(ModelName.parse("localhost:5000/team/m"), True, up) == "http://localhost:5000"
    with pytest.raises(BadRequest, match="insecure protocol http"):
        registry_base(ModelName.parse("http://localhost:5000/team/m"), False, up)


def test_challenge_and_token_url() -> None:
    challenge = parse_challenge('Bearer realm="https://r.test/v2/token",service="svc",scope="repository:a/b:pull '
                                'repository:c/d:pull"')
    assert challenge == Challenge("https://r.test/v2/token", "svc", "repository:a/b:pull repository:c/d:pull")
    query = parse_qs(urlsplit(token_url(challenge, "r.test")).query)
    assert query["service"] == ["svc"] and query["scope"] == ["repository:a/b:pull", "repository:c/d:pull"]
    assert query["ts"][0].isdigit() and len(query["nonce"][0]) == 22
    assert parse_challenge('Basic realm="x"') is None
    with pytest.raises(Unauthorized, match=r'realm host "evil\.test" does not match original host "r\.test"'):
        token_url(Challenge("https://evil.test/token"), "r.test")


# -- requests ---------------------------------------------------------------------------------------------------------
async def test_anonymous_token_then_manifest() -> None:
    fake = Fake(token="t0k")
    client = remote(fake)
    assert await client.get_manifest("library/m", "latest") == b'{"schemaVersion": 2}'
    await client.aclose()
    token_request = next(r for r in fake.requests if r.url.path == "/token")
    assert "authorization" not in token_request.headers
    assert fake.requests[-1].headers["authorization"] == "Bearer t0k"


async def test_token_request_is_signed_with_the_ed25519_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    fake = Fake(token="t0k")
    client = remote(fake, TransferOptions(**{**OPTIONS.__dict__, "key_file": key_file}))
    await client.get_manifest("library/m", "latest")
    await client.aclose()
    token_request = next(r for r in fake.requests if r.url.path == "/token")
    public_blob, signature = token_request.headers["authorization"].split(":")
    public = serialization.load_ssh_public_key(f"ssh-ed25519 {public_blob}".encode())
    assert isinstance(public, Ed25519PublicKey)
    empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    public.verify(base64.b64decode(signature), f"GET,{token_request.url},{empty}".encode())  # raises if wrong


async def test_manifest_errors_and_retries() -> None:
    fake = Fake(manifest_status=[500, 503])
    client = remote(fake)
    assert await client.get_manifest("library/m", "latest") == b'{"schemaVersion": 2}'
    assert len(fake.requests) == 3
    fake.manifest_status = [500, 500, 500]
    with pytest.raises(UpstreamError, match=r"^pull model manifest: 500: boom$"):
        await client.get_manifest("library/m", "latest")
    fake.manifest_status = [404]
    with pytest.raises(NotFound, match=r"^pull model manifest: file does not exist$"):
        await client.get_manifest("library/m", "latest")
    fake.manifest_status = [401]
    with pytest.raises(Unauthorized, match=r"^pull model manifest: unauthorized: access denied"):
        await client.get_manifest("library/m", "latest")
    await client.aclose()


async def test_locate_follows_same_host_redirects_and_stops_at_the_cdn() -> None:
    fake = Fake()
    client = remote(fake)
    assert await client.locate_blob("library/m", DIGEST) == f"http://cdn.test/b/{DIGEST}?sig=1"
    assert [r.url.host for r in fake.requests] == ["reg.test", "reg.test"], "the CDN URL is not fetched"
    fake.serve_direct = True
    assert await client.locate_blob("library/m", DIGEST) == f"{REGISTRY}/v2/library/m/blobs/{DIGEST}"
    await client.aclose()


# -- downloads --------------------------------------------------------------------------------------------------------
async def download(store: Store, fake: Fake, total: int = len(BLOB)) -> BlobDownload:
    client = remote(fake)
    job = BlobDownload(store, DIGEST, total, OPTIONS)
    try:
        await job.run(client, "library/m")
    finally:
        await client.aclose()
    return job


async def test_download_in_parallel_parts_verified_and_renamed(tmp_path: Path) -> None:
    store, fake = Store(tmp_path), Fake()
    job = await download(store, fake)
    assert store.read_blob(DIGEST) == BLOB
    assert len(fake.ranges()) == 11 and job.fetched == len(BLOB)
    assert [p.name for p in store.blobs.iterdir()] == [store.blob_path(DIGEST).name]


async def test_download_resumes_from_part_files_after_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(UpstreamError, match="part 6"):
        await download(store, Fake(fail_from=600))  # the "process" dies with parts 0-5 done
    states = [json.loads(p.read_text()) for p in store.blobs.glob("*-partial-*")]
    assert len(states) == 11 and sum(s["Completed"] for s in states) == 600
    fake = Fake()
    job = await download(store, fake)  # a new process: a new download object reads the state files
    assert store.read_blob(DIGEST) == BLOB
    assert job.fetched == len(BLOB) - 600
    assert sorted(int(r.split("=")[1].split("-")[0]) for r in fake.ranges()) == [600, 700, 800, 900, 1000]


async def test_dropped_connection_resumes_mid_part(tmp_path: Path) -> None:
    store, fake = Store(tmp_path), Fake(drop_after=30)
    job = await download(store, fake)
    assert store.read_blob(DIGEST) == BLOB
    assert job.fetched == len(BLOB), "no byte fetched twice"
    assert "bytes=30-99" in fake.ranges(), "the retry starts where the drop left off"


async def test_digest_mismatch_discards_the_download(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(DigestMismatch) as caught:
        await download(store, Fake(corrupt=True))
    want = f"digest mismatch, file must be downloaded again: want {DIGEST}, got sha256:"
    assert caught.value.message.startswith(want)
    assert list(store.blobs.iterdir()) == []


async def test_stale_state_files_start_over(tmp_path: Path) -> None:
    store = Store(tmp_path)
    stale = BlobDownload(store, DIGEST, 2000, OPTIONS)
    stale.prepare()  # state files for another size
    job = await download(store, Fake())
    assert store.read_blob(DIGEST) == BLOB and job.fetched == len(BLOB)


async def test_same_digest_is_downloaded_once(tmp_path: Path) -> None:
    store, fake = Store(tmp_path), Fake()
    client, downloads = remote(fake), Downloads()
    first = downloads.start(BlobDownload(store, DIGEST, len(BLOB), OPTIONS), client, "library/m")
    second = downloads.start(BlobDownload(store, DIGEST, len(BLOB), OPTIONS), client, "library/m")
    assert first[1] is second[1]
    await asyncio.gather(first[1], second[1])
    await client.aclose()
    assert len(fake.ranges()) == 11 and store.has_blob(DIGEST)
