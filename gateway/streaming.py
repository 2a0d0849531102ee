"""Relay one request's reply stream (``caravan:r:{id}``) to the client.

``ReplyReader`` XREADs the stream from ``0-0`` (or from the ``start`` entry that the enqueue script wrote when it
handed the request to a waiting worker, and returned) in BLOCK 1 s rounds; between rounds it notices a client that
left (499 + cancel), a worker that died after starting (error at once), or no worker holding the spec
before start (placement is retried). ``first()`` waits for the first payload event before any byte is
sent, so early failures keep their HTTP status; later ones become a final ``{"error": ...}`` line. A client
that leaves mid-reply is noticed by ``RelayResponse``'s watcher when streaming, by ``collect``'s poll when not;
either way the job is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from caravan import keys
from caravan.errors import CaravanError, ClientClosed, from_wire
from caravan.queue import Event, InferenceJob
from gateway.metrics import RequestObserver
from gateway.scheduler import Scheduler
from gateway.usage import note_event

log = logging.getLogger(__name__)
BLOCK_MS = 1000
DISCONNECT_POLL_S = 0.5  # non-streaming: how often a reply that is still coming checks that its client waits


class ReplyReader:
    """Events of one job, in order, with liveness checks between reads."""

    def __init__(self, redis: Redis, scheduler: Scheduler, job: InferenceJob, request: Request, load_timeout: float,
                 observer: RequestObserver | None = None):
        self.redis = redis
        self.observer = observer
        self.scheduler = scheduler
        self.job = job
        self.request = request
        self.key = keys.reply(job.id)
        self.last = b"0-0"
        self.worker: str | None = None
        self.served_by: str | None = None
        self.started_at: float | None = None
        self.finished = False
        self.delivered = False
        self.deadline = time.monotonic() + load_timeout
        self._pending: list[Event] = []

    async def next(self) -> Event:
        while not self._pending:
            reply = await self.redis.xread({self.key: self.last}, count=256, block=BLOCK_MS)
            if not reply:
                await self._idle_checks()
                continue
            for entry_id, fields in reply[0][1]:
                self.feed(entry_id, fields)
        event = self._pending.pop(0)
        if self.observer:
            self.observer.event(event)
        note_event(self.job, event)  # usage accounting (gateway.usage)
        if event.t == "start":
            self.worker = self.served_by = event.worker
            self.started_at = self.started_at or time.perf_counter()
        elif event.t in ("done", "err"):
            self.finished = True
        return event

    def feed(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """An entry of the reply stream, as XREAD returns it; reading goes on after it."""
        self.last = entry_id
        self._pending.append(Event.decode(fields))

    async def first(self) -> Event:
        """The first event that is not ``start``; an ``err`` here raises with its status.

        Until this returns nothing has reached the client, so a worker that dies now costs only a retry.
        """
        while (event := await self.next()).t == "start":
            pass
        if event.t == "err":
            raise from_wire({"status": event.status, "error": event.error})
        self.delivered = True
        return event

    async def rest(self) -> AsyncIterator[Event]:
        while not self.finished:
            yield await self.next()

    async def check_client(self) -> None:
        """499 (and, through ``close``, a cancelled job) when the client has gone."""
        if await self.request.is_disconnected():
            raise ClientClosed("request canceled")

    async def _idle_checks(self) -> None:
        await self.check_client()
        if self.worker is not None:
            if not await self.scheduler.alive(self.worker):
                await self._worker_lost()
            return
        failure = await self.scheduler.load_failure(self.job.spec)
        if failure:
            raise CaravanError(failure)
        if time.monotonic() > self.deadline:
            raise CaravanError("timed out waiting for a worker to load the model")
        await self.scheduler.ensure_placed(self.job.spec)

    async def _worker_lost(self) -> None:
        lost, self.worker = self.worker or "", None
        self.scheduler.forget_snapshot()
        if self.delivered:
            raise CaravanError(f"worker {lost} stopped while generating the response")
        log.warning("worker lost before streaming; retrying elsewhere", extra={"worker": lost})
        await self.scheduler.resubmit(self.job, lost)

    async def close(self) -> None:
        """Cancel unfinished work and drop the reply stream (shielded: runs on client disconnect too)."""
        if self.observer:
            self.observer.close()
        with anyio.CancelScope(shield=True):
            try:
                if self.finished:
                    await self.redis.delete(self.key)
                else:  # the worker's last events still land here and expire with the stream
                    await self.scheduler.cancel(self.job.id)
            except Exception as exc:  # cleanup must never mask the real outcome
                log.warning("reply cleanup failed", extra={"error": str(exc)})


class RelayResponse(StreamingResponse):
    """A reply's chunks, sent from the request's own task; the first goes out right behind the headers.

    Starlette's StreamingResponse runs the send and a disconnect listener in an anyio task group (~0.2 ms
    before the first byte here); this watches for the client leaving with a plain task that cancels the send,
    so the body's ``finally`` still cancels the job at once. The relay also stops at the next chunk once the
    client has left, whether or not the cancellation arrived: one that lands while redis-py's asyncio client
    reads a reply is sometimes lost (the XREAD in flight returns normally; seen in about one request in
    six), and uvicorn drops what is sent to a closed connection without an error, so the worker would have
    generated to the end for nobody.
    """

    left = False  # the client has gone (set by the watcher)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        assert sender is not None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.left = True
            sender.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not self.left:
                raise
        finally:
            watcher.cancel()
        if self.left:  # the watcher's cancel, delivered or lost on the way: either way it is handled
            sender.uncancel()

    async def stream_response(self, send: Send) -> None:
        chunks = aiter(self.body_iterator)
        try:
            first = await anext(chunks, b"")
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in chunks:
                if self.left:
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()  # the body's ``finally``: the job is cancelled unless it finished


Shaper = Callable[[Event], list[dict[str, Any]]]  # one event → zero or more response chunks
OnDone = Callable[[str], Awaitable[None]]


def ndjson_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def sse_line(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def shaped(reader: ReplyReader, first: Event, shape: Shaper, on_done: OnDone) -> AsyncIterator[dict[str, Any]]:
    """The reply's chunks in order; an ``err`` event raises (with its status) where it occurs."""
    text: list[str] = []
    event: Event | None = first
    events = reader.rest()
    while event is not None:
        if event.t == "err":
            raise from_wire({"status": event.status, "error": event.error or "unknown error"})
        if event.t == "tok":
            text.append(event.text)
        elif event.t == "done":
            await on_done("".join(text))
        for chunk in shape(event):
            yield chunk
        event = await anext(events, None)


def ndjson_stream(reader: ReplyReader, first: Event, shape: Shaper, headers: dict[str, str],
                  on_done: OnDone) -> RelayResponse:
    """Stream shaped events as NDJSON; a failure mid-stream becomes a final error line."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in shaped(reader, first, shape, on_done):
                yield ndjson_line(chunk)
        except CaravanError as exc:
            yield ndjson_line({"error": exc.message})
        finally:
            await reader.close()

    return RelayResponse(body(), media_type="application/x-ndjson", headers=headers)


def sse_stream(reader: ReplyReader, first: Event, shape: Shaper, headers: dict[str, str],
               on_done: OnDone) -> RelayResponse:
    """Stream shaped events as server-sent events ending with ``data: [DONE]``; a failure mid-stream becomes
    a final ``data: {"error": {...}}`` event in OpenAI's envelope (which the OpenAI SDKs raise)."""
    from caravan.wire.openai import error_envelope

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in shaped(reader, first, shape, on_done):
                yield sse_line(chunk)
            yield b"data: [DONE]\n\n"
        except CaravanError as exc:
            yield sse_line(error_envelope(exc))
        finally:
            await reader.close()

    return RelayResponse(body(), media_type="text/event-stream", headers=headers)


async def collect(reader: ReplyReader, first: Event, shape: Shaper, on_done: OnDone) -> list[dict[str, Any]]:
    """Non-streaming: every chunk of the reply (an ``err`` raises with its status, nothing was sent yet). A client
    that leaves is noticed within ``DISCONNECT_POLL_S`` while events keep coming (the reader's own check runs
    only when none came for a round), and the job is cancelled."""
    chunks: list[dict[str, Any]] = []
    polled = time.monotonic()
    try:
        async for chunk in shaped(reader, first, shape, on_done):
            chunks.append(chunk)
            if time.monotonic() - polled > DISCONNECT_POLL_S:
                polled = time.monotonic()
                await reader.check_client()
        return chunks
    finally:
        await reader.close()
