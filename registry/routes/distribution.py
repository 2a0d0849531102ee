"""Caravan as a registry: the distribution API under ``/v2/`` (ollama-api.md §7), so ``ollama pull``/``push``
with ``--insecure``, docker-style clients and other Caravans can use this store as their registry.

    GET  /v2/                                           200 {}
    GET  /v2/_catalog                                   {"repositories": [...]}
    GET  /v2/<repo>/tags/list                           {"name": repo, "tags": [...]}
    GET|HEAD /v2/<repo>/manifests/<tag|digest>          the stored bytes, Docker-Content-Digest
    PUT  /v2/<repo>/manifests/<tag>                     every referenced blob must be here
    HEAD /v2/<repo>/blobs/<digest>                      200 + Content-Length
    GET  /v2/<repo>/blobs/<digest>  with Range          206 with the bytes
    GET  /v2/<repo>/blobs/<digest>  without Range       307 → <other host spelling>/v2/_blobs/<digest>
    GET|HEAD /v2/_blobs/<digest>                        the bytes (Range supported): the "direct URL"
    POST /v2/<repo>/blobs/uploads/  (?mount=&from=, ?digest=)   202 Location | 201 (mounted / monolithic)
    PATCH|PUT|GET|DELETE /v2/<repo>/blobs/uploads/<id>  append / commit ?digest= / status / cancel

``<repo>`` is ``ns/model`` for names on the default host and ``host:port/ns/model`` for the others, which live
under ``manifests/<host:port>/...``.

Why the blob redirect: Ollama resolves a blob's "direct URL" with a GET that follows redirects only within the
same hostname, and older versions fail on a plain 200 (``http: no Location header in response``). So a GET
without Range answers 307 to the same server under another spelling of its host: ``127.0.0.1`` ↔ ``localhost``,
another IPv4 address → ``[::ffff:a.b.c.d]`` (the same address, IPv4-mapped), a DNS name → the same name with a
trailing dot (``mirror.lan.``: the same host to DNS, a different hostname to the client). An IPv6 literal other
than ``::1`` has no second spelling and is redirected to itself. ``CARAVAN_BLOB_REDIRECT_HOST`` overrides
all of this (e.g. a second DNS name of the machine). Ranged GETs and HEADs are answered directly.

A manifest miss for a default-host repository is pulled from the upstream first (pull-through cache,
``CARAVAN_PULL_THROUGH``), through the same deduplicated pull job as ``/api/pull``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from caravan.errors import CaravanError, DigestMismatch, NotFound
from caravan.names import DEFAULT_HOST, ModelName, parse_digest
from caravan.settings import RegistrySettings
from registry.jobs import TransferService
from registry.oci import API_VERSION, MANIFEST_V2, OCTET, error_body, name_from_repository, served_repository
from registry.store import Manifest, Store, StoredManifest
from registry.uploads import RangeInvalid, Uploads, parse_content_range

router = APIRouter()
VIA = "x-caravan-via"


class BlobFile(FileResponse):
    chunk_size = 1 << 20


def oci_error(status: int, code: str, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, detail), status_code=status, headers=API_VERSION)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _blob_path_or_404(store: Store, digest: str) -> Any:
    try:
        path = store.blob_path(parse_digest(digest))
    except CaravanError:
        return None
    return path if path.is_file() else None


# -- base, catalog, tags ------------------------------------------------------------------------------------
@router.get("/v2/")
@router.get("/v2")
async def base() -> JSONResponse:
    return JSONResponse({}, headers=API_VERSION)


@router.get("/v2/_catalog")
async def catalog(request: Request, n: int = 1000, last: str = "") -> JSONResponse:
    repos = sorted({served_repository(name) for name in _store(request).list_names()})
    page = [repo for repo in repos if repo > last][: max(n, 0)]
    return JSONResponse({"repositories": page}, headers=API_VERSION)


@router.get("/v2/_blobs/{digest}")
@router.head("/v2/_blobs/{digest}")
async def direct_blob(request: Request, digest: str) -> Response:
    path = _blob_path_or_404(_store(request), digest)
    if path is None:
        return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
    return BlobFile(path, media_type=OCTET, headers={"Docker-Content-Digest": parse_digest(digest), **API_VERSION})


@router.get("/v2/{repo:path}/tags/list")
async def tags(request: Request, repo: str) -> JSONResponse:
    found = sorted(name.tag for name in _store(request).list_names()
                   if served_repository(name).lower() == repo.lower())
    if not found:
        return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry", {"name": repo})
    return JSONResponse({"name": repo, "tags": found}, headers=API_VERSION)


# -- manifests ---------------------------------------------------------------------------------------------
def find_manifest(store: Store, repo: str, reference: str) -> StoredManifest:
    """The stored manifest a ``/v2/`` reference (tag or ``sha256:`` digest) names."""
    if reference.startswith("sha256:"):
        for stored in store.list_manifests():
            if served_repository(stored.name).lower() == repo.lower() and f"sha256:{stored.digest}" == reference:
                return stored
        raise NotFound(f"manifest {reference} unknown")
    return store.read_manifest(name_from_repository(repo, reference))


async def pull_through(request: Request, name: ModelName) -> bool:
    """Pull a default-host name from the upstream on a miss; True when it arrived."""
    settings: RegistrySettings = request.app.state.settings
    service: TransferService | None = getattr(request.app.state, "transfers", None)
    if service is None or not (settings.pull_through and settings.upstream) or name.host != DEFAULT_HOST:
        return False
    if request.headers.get(VIA) == service.transfers.options.via:
        return False  # our own pull asked us: the upstream points back here
    final, _ = await service.outcome("pull", name, await service.start("pull", name))
    return final.get("status") == "success"


@router.api_route("/v2/{repo:path}/manifests/{reference}", methods=["GET", "HEAD"])
async def get_manifest(request: Request, repo: str, reference: str) -> Response:
    store = _store(request)
    try:
        stored = find_manifest(store, repo, reference)
    except NotFound:
        name = None if reference.startswith("sha256:") else name_from_repository(repo, reference)
        if name is None or not await pull_through(request, name):
            return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"name": repo, "reference": reference})
        stored = store.read_manifest(name)
    headers = {"Docker-Content-Digest": f"sha256:{stored.digest}", **API_VERSION}
    return Response(stored.raw, media_type=stored.manifest.media_type or MANIFEST_V2, headers=headers)


@router.put("/v2/{repo:path}/manifests/{reference}")
async def put_manifest(request: Request, repo: str, reference: str) -> Response:
    store, raw = _store(request), await request.body()
    name = name_from_repository(repo, reference)
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValueError as exc:
        return oci_error(400, "MANIFEST_INVALID", "manifest invalid", str(exc)[:500])
    missing = sorted(digest for digest in manifest.all_digests() if not store.has_blob(digest))
    if missing:
        return oci_error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", missing[0])
    store.write_manifest(store.resolve(name), raw)
    digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    headers = {"Location": _absolute(request, f"/v2/{repo}/manifests/{reference}"), "Docker-Content-Digest": digest,
               **API_VERSION}
    return Response(status_code=201, headers=headers)


# -- uploads (registered before the blob routes) -----------------------------------------------------------
def _absolute(request: Request, path: str) -> str:
    """An absolute URL on this server as the client addressed it (Ollama cannot follow relative Locations)."""
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}{path}"


def _upload_headers(request: Request, repo: str, upload_id: str, size: int) -> dict[str, str]:
    location = _absolute(request, f"/v2/{repo}/blobs/uploads/{upload_id}")
    return {"Location": location, "Docker-Upload-UUID": upload_id, "Range": f"0-{max(size - 1, 0)}",
            "Content-Length": "0", **API_VERSION}


def _blob_created(request: Request, repo: str, digest: str) -> Response:
    headers = {"Location": _absolute(request, f"/v2/{repo}/blobs/{digest}"), "Docker-Content-Digest": digest,
               "Content-Length": "0", **API_VERSION}
    return Response(status_code=201, headers=headers)


@router.post("/v2/{repo:path}/blobs/uploads/")
async def start_upload(request: Request, repo: str, mount: str = "", digest: str = "") -> Response:
    store = _store(request)
    if mount and _blob_path_or_404(store, mount) is not None:
        return _blob_created(request, repo, parse_digest(mount))
    if digest:
        try:
            written, _ = await store.write_blob_stream(request.stream(), digest)
        except DigestMismatch as exc:
            return oci_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content", exc.message)
        return _blob_created(request, repo, written)
    upload_id = Uploads(store).start()
    return Response(status_code=202, headers=_upload_headers(request, repo, upload_id, 0))


@router.patch("/v2/{repo:path}/blobs/uploads/{upload_id}")
async def patch_upload(request: Request, repo: str, upload_id: str) -> Response:
    uploads = Uploads(_store(request))
    try:
        start = parse_content_range(request.headers.get("content-range"))
        size = await uploads.write(upload_id, request.stream(), start)
    except RangeInvalid as exc:
        return oci_error(416, "BLOB_UPLOAD_INVALID", exc.message)
    except NotFound:
        return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload_id)
    return Response(status_code=202, headers=_upload_headers(request, repo, upload_id, size))


@router.put("/v2/{repo:path}/blobs/uploads/{upload_id}")
async def commit_upload(request: Request, repo: str, upload_id: str, digest: str = "") -> Response:
    uploads = Uploads(_store(request))
    try:
        await uploads.write(upload_id, request.stream())
        committed = await asyncio.to_thread(uploads.commit, upload_id, digest)
    except NotFound:
        return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload_id)
    except CaravanError as exc:  # a missing/invalid digest or a mismatch
        return oci_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content", exc.message)
    return _blob_created(request, repo, committed)


@router.get("/v2/{repo:path}/blobs/uploads/{upload_id}")
async def upload_status(request: Request, repo: str, upload_id: str) -> Response:
    try:
        size = Uploads(_store(request)).size(upload_id)
    except NotFound:
        return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload_id)
    return Response(status_code=204, headers=_upload_headers(request, repo, upload_id, size))


@router.delete("/v2/{repo:path}/blobs/uploads/{upload_id}")
async def cancel_upload(request: Request, repo: str, upload_id: str) -> Response:
    try:
        Uploads(_store(request)).cancel(upload_id)
    except NotFound:
        return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload_id)
    return Response(status_code=204, headers=API_VERSION)


# -- blobs ----------------------------------------------------------------------------------------------------
def redirect_host(host: str, configured: str = "") -> str:
    """Another spelling of ``host[:port]`` that reaches the same server (see the module docstring)."""
    if configured:
        return configured
    hostname, port = _split_host(host)
    alternative = {"localhost": "127.0.0.1", "127.0.0.1": "localhost", "::1": "127.0.0.1"}.get(hostname.lower())
    if alternative is None:
        alternative = _other_spelling(hostname)
    if ":" in alternative:
        alternative = f"[{alternative}]"
    return f"{alternative}:{port}" if port else alternative


def _split_host(host: str) -> tuple[str, str]:
    if host.startswith("["):
        hostname, _, rest = host[1:].partition("]")
        return hostname, rest.removeprefix(":")
    hostname, _, port = host.partition(":")
    return hostname, port


def _other_spelling(hostname: str) -> str:
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return hostname[:-1] if hostname.endswith(".") else hostname + "."
    return f"::ffff:{address}" if address.version == 4 else hostname


@router.api_route("/v2/{repo:path}/blobs/{digest}", methods=["GET", "HEAD"])
async def get_blob(request: Request, repo: str, digest: str) -> Response:
    path = _blob_path_or_404(_store(request), digest)
    if path is None:
        return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
    headers = {"Docker-Content-Digest": parse_digest(digest), **API_VERSION}
    if request.method == "HEAD" or "range" in request.headers:
        return BlobFile(path, media_type=OCTET, headers=headers)
    settings: RegistrySettings = request.app.state.settings
    host = redirect_host(request.headers.get("host", request.url.netloc), settings.blob_redirect_host)
    location = f"{request.url.scheme}://{host}/v2/_blobs/{parse_digest(digest)}"
    return Response(status_code=307, headers={"Location": location, **headers})
