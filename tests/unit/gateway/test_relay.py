"""``RelayResponse``: a client that leaves stops the relay and cancels the job, even when a library loses the
cancellation on its way (as redis-py's asyncio client sometimes does while it reads a reply)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.types import Message

from gateway.streaming import RelayResponse

CHUNKS = 200


async def relay(swallow: bool) -> tuple[int, bool, bool]:
    """Chunks sent, whether the body's ``finally`` ran (the job's cancel), whether the request task ended
    without a pending cancellation. The client leaves once it has its first chunk."""
    closed = False
    sent: list[Message] = []
    got_first = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        nonlocal closed
        try:
            for index in range(CHUNKS):
                try:
                    await asyncio.sleep(0.001)  # waiting for the next event from Redis
                except asyncio.CancelledError:
                    if not swallow:
                        raise  # a well-behaved library; the other kind returns as if nothing happened
                yield b"chunk %d\n" % index
        finally:
            closed = True

    async def receive() -> Message:
        await got_first.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            got_first.set()

    async def request() -> bool:
        await RelayResponse(body(), media_type="application/x-ndjson")({"type": "http"}, receive, send)
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0

    clean = await asyncio.wait_for(asyncio.create_task(request()), 30)
    return sum(1 for m in sent if m["type"] == "http.response.body"), closed, clean


async def test_a_client_that_leaves_cancels_the_job() -> None:
    count, closed, clean = await relay(swallow=False)
    assert count < CHUNKS and closed and clean


async def test_a_lost_cancellation_still_stops_the_relay_and_cancels_the_job() -> None:
    count, closed, clean = await relay(swallow=True)
    assert count < 5, f"{count} chunks relayed to a client that had left"
    assert closed, "the body's finally (which cancels the job) ran"
    assert clean, "the request task is not left cancelling"
