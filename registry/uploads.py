"""Blob uploads in progress on Caravan's ``/v2/`` (the server side of ollama-api.md §7.4)::

    blobs/.tmp-upload-<32 hex>    bytes received so far (never a valid digest, so GC and listings skip it)

``POST uploads/`` creates the file; each ``PATCH`` writes its body at the offset its ``Content-Range`` names
(the file is cut there first, so a client that re-sends a part after a dropped connection is fine; a gap is
refused); ``PUT ?digest=`` appends a last body, hashes the file, and renames it to ``blobs/sha256-<hex>`` or
deletes it on a mismatch.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from caravan.errors import BadRequest, DigestMismatch, NotFound
from caravan.names import parse_digest
from registry.store import Store, file_digest

_ID = re.compile(r"^[0-9a-f]{32}$")
PREFIX = ".tmp-upload-"


class RangeInvalid(BadRequest):
    """A PATCH that would leave a gap (HTTP 416)."""

    status = 416


class Uploads:
    """Upload sessions of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def path(self, upload_id: str) -> Path:
        """The file of an existing upload (404 for unknown or malformed ids)."""
        path = self.store.blobs / f"{PREFIX}{upload_id}"
        if not _ID.match(upload_id) or not path.is_file():
            raise NotFound("blob upload unknown")
        return path

    def start(self) -> str:
        upload_id = uuid.uuid4().hex
        (self.store.blobs / f"{PREFIX}{upload_id}").touch()
        return upload_id

    def size(self, upload_id: str) -> int:
        return self.path(upload_id).stat().st_size

    async def write(self, upload_id: str, chunks: AsyncIterator[bytes], start: int | None = None) -> int:
        """Write a body at ``start`` (default: the end); returns the upload's new size."""
        path = self.path(upload_id)
        size = path.stat().st_size
        offset = size if start is None else start
        if offset > size:
            raise RangeInvalid(f"range starts at {offset} but {size} bytes were received")
        with path.open("r+b") as handle:
            handle.truncate(offset)
            handle.seek(offset)
            async for chunk in chunks:
                handle.write(chunk)
            return handle.tell()

    def commit(self, upload_id: str, digest: str) -> str:
        """Verify the upload against ``digest`` and move it into the store; returns the canonical digest."""
        want = parse_digest(digest)
        path = self.path(upload_id)
        got = file_digest(path)
        if got != want:
            path.unlink(missing_ok=True)
            raise DigestMismatch(f"digest mismatch, expected \"{want}\", got \"{got}\"")
        os.chmod(path, 0o644)
        os.utime(path)  # a fresh mtime: GC's grace period counts from the commit, not the upload's start
        os.replace(path, self.store.blob_path(want))
        return want

    def cancel(self, upload_id: str) -> None:
        self.path(upload_id).unlink(missing_ok=True)


def parse_content_range(value: str | None) -> int | None:
    """The start offset of ``Content-Range: <start>-<end>`` (also ``bytes <start>-<end>/<total>``)."""
    if not value:
        return None
    match = re.match(r"^(?:bytes[ =])?(\d+)-(\d+)", value.strip())
    if not match:
        raise RangeInvalid(f"invalid Content-Range {value!r}")
    return int(match.group(1))
