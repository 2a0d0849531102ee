"""Resumable, parallel, verified blob downloads (ollama-api.md §7.3), in Ollama's on-disk form::

    blobs/sha256-<hex>-partial      the blob being written, pre-sized to its total (sparse)
    blobs/sha256-<hex>-partial-N    JSON state of part N: {"N": 0, "Offset": 0, "Size": .., "Completed": ..}

Parts (total/16 clamped to [min, max]) are fetched with ranged GETs, at most ``streams`` at a time, each
written at its offset. A part's state file is rewritten every few MiB and when an attempt ends, so after a
crash or restart the next download reads the state files and fetches only what is missing. An attempt that
moved bytes resets the part's retry count (a stalled or dropped connection just resumes); one that did not
counts, up to ``retries``, sleeping ``backoff`` × 2^attempt. When every part is complete the file is hashed:
a match is renamed to ``blobs/sha256-<hex>``; a mismatch deletes the partial and its state files.

:class:`Downloads` keeps one running download per digest, so pulls that need the same blob share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from caravan.errors import CaravanError, DigestMismatch, UpstreamError
from caravan.names import parse_digest
from registry.client import RemoteRegistry, Retryable, TransferOptions
from registry.oci import Part, plan_parts, short
from registry.store import Store, file_digest

log = logging.getLogger(__name__)

SAVE_EVERY = 1 << 20
STATE_WIDTH = 128
_PART_FILE = re.compile(r"-partial-(\d+)$")


class BlobDownload:
    """One blob fetched into ``<blob>-partial`` in ranged parts; ``completed`` and ``fetched`` are live."""

    def __init__(self, store: Store, digest: str, total: int, options: TransferOptions,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.digest = parse_digest(digest)
        self.on_bytes = on_bytes
        self.total = total
        self.options = options
        self.path = store.blob_path(self.digest)
        self.partial = self.path.with_name(self.path.name + "-partial")
        self.parts: list[Part] = []
        self.fetched = 0  # bytes received over the network by this process

    @property
    def completed(self) -> int:
        return sum(part.completed for part in self.parts)

    def part_file(self, part: Part) -> Path:
        return self.path.with_name(f"{self.partial.name}-{part.n}")

    # -- state -------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Resume from the state files when they describe this blob, else start over."""
        self.parts = self._load_parts() or []
        if not self.parts:
            self.discard()
            self.parts = plan_parts(self.total, self.options.min_part, self.options.max_part)
            for part in self.parts:
                self.save(part)
        with self.partial.open("ab") as handle:
            handle.truncate(self.total)
        if self.completed:
            log.info("resuming %s at %d of %d bytes", short(self.digest), self.completed, self.total)

    def _load_parts(self) -> list[Part] | None:
        if not self.partial.is_file():
            return None
        try:
            parts = sorted((Part.from_json(json.loads(path.read_bytes())) for path in self._state_files()),
                           key=lambda part: part.n)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        offsets = [part.offset for part in parts]
        expected = [sum(part.size for part in parts[:i]) for i in range(len(parts))]
        if not parts or offsets != expected or sum(part.size for part in parts) != self.total:
            return None
        return [Part(p.n, p.offset, p.size, min(max(p.completed, 0), p.size)) for p in parts]

    def _state_files(self) -> list[Path]:
        prefix = self.partial.name + "-"
        return [path for path in self.path.parent.glob(prefix + "*") if _PART_FILE.search(path.name)]

    def save(self, part: Part) -> None:
        """Rewrite a part's state file in place: one write of a fixed-width record (JSON padded with spaces),
        so it never needs truncating (on ext4 a truncate-and-rewrite forces a data flush, ~2 ms each)."""
        record = json.dumps(part.to_json()).encode().ljust(STATE_WIDTH)
        fd = os.open(self.part_file(part), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, record, 0)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove the partial file and every state file."""
        for path in [self.partial, *self._state_files()]:
            path.unlink(missing_ok=True)

    # -- transfer ------------------------------------------------------------------------------------------
    async def run(self, registry: RemoteRegistry, repo: str) -> None:
        """Fetch what is missing, verify, rename into place."""
        self.prepare()
        url = await registry.locate_blob(repo, self.digest) if self.completed < self.total else ""
        fd = os.open(self.partial, os.O_RDWR)
        try:
            await self._fetch_parts(registry, url, fd)
        finally:
            os.close(fd)
        await asyncio.to_thread(self.commit)

    async def _fetch_parts(self, registry: RemoteRegistry, url: str, fd: int) -> None:
        gate = asyncio.Semaphore(max(1, self.options.streams))
        try:
            async with asyncio.TaskGroup() as group:
                for part in self.parts:
                    if not part.done:
                        group.create_task(self._fetch_part(registry, url, fd, part, gate))
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None

    async def _fetch_part(self, registry: RemoteRegistry, url: str, fd: int, part: Part,
                          gate: asyncio.Semaphore) -> None:
        async with gate:
            failures = 0
            while not part.done:
                before = part.completed
                error = await self._attempt(registry, url, fd, part)
                failures = 0 if part.completed > before else failures + 1
                if part.done:
                    return
                if failures >= self.options.retries:
                    raise UpstreamError(f"pull {short(self.digest)} part {part.n}: {error or 'no data'}")
                if failures:
                    await asyncio.sleep(self.options.backoff * 2 ** (failures - 1))

    async def _attempt(self, registry: RemoteRegistry, url: str, fd: int, part: Part) -> str | None:
        """One ranged GET; returns the error text of a transient failure (None when the body ended)."""
        unsaved = 0
        try:
            async with contextlib.aclosing(registry.iter_range(url, part.start, part.stop)) as chunks:
                async for chunk in chunks:
                    unsaved += self._write(fd, part, chunk)
                    if unsaved >= SAVE_EVERY:
                        self.save(part)
                        unsaved = 0
                    if part.done:
                        break
        except Retryable as exc:
            return exc.message
        except Exception as exc:  # httpx errors mid-body: a dropped or stalled connection
            if isinstance(exc, CaravanError):
                raise
            return f"{type(exc).__name__}: {exc}"
        finally:
            self.save(part)
        return None

    def _write(self, fd: int, part: Part, chunk: bytes) -> int:
        """Write a chunk at the part's next offset (never past the part); returns the bytes written."""
        if len(chunk) > part.stop - part.start:
            chunk = chunk[: part.stop - part.start]
        os.pwrite(fd, chunk, part.start)
        part.completed += len(chunk)
        self.fetched += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))
        return len(chunk)

    def commit(self) -> None:
        """Verify the sha256 of the complete file; rename it into place, or delete it on a mismatch."""
        got = file_digest(self.partial)
        if got != self.digest:
            self.discard()
            raise DigestMismatch(f"digest mismatch, file must be downloaded again: want {self.digest}, got {got}")
        for path in self._state_files():
            path.unlink(missing_ok=True)
        os.chmod(self.partial, 0o644)
        os.replace(self.partial, self.path)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group (cancellations of the sibling parts are not it)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


class Downloads:
    """The downloads running in this process: one per digest, joined by every pull that needs that blob."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[BlobDownload, asyncio.Task[None]]] = {}

    def start(self, download: BlobDownload, registry: RemoteRegistry,
              repo: str) -> tuple[BlobDownload, asyncio.Task[None]]:
        """Run ``download``, or join the one already running for its digest."""
        running = self._running.get(download.digest)
        if running is not None:
            return running
        task = asyncio.create_task(download.run(registry, repo), name=f"download {short(download.digest)}")
        self._running[download.digest] = (download, task)
        task.add_done_callback(lambda _: self._running.pop(download.digest, None))
        return download, task

    def active(self) -> list[BlobDownload]:
        return [download for download, _ in self._running.values()]

    async def close(self) -> None:
        """Cancel every download (their state files stay, so the next start resumes)."""
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
