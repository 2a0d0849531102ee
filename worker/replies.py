"""Reply events to Redis: what every request's relay hands over in one turn of the event loop goes out in one
round trip.

With N streams in a batch, one engine step wakes N relays in the same loop turn; written one command each they
cost N round trips of redis-py's Python (≈ 40-60 µs each here) on a machine whose cores llama.cpp needs. A
lone event (one stream) is one plain ``XADD``.

A request's first token is the exception: the engine thread writes it itself (:meth:`ReplyWriter.first_token`,
a plain blocking ``XADD`` on a connection of its own), so the time to first token skips the hop to the event
loop and the relay (≈ 0.2 ms here); the engine's next step waits for that one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis import Redis as BlockingRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from caravan import keys
from caravan.queue import Event
from worker.engine.base import FirstToken

MAXLEN = 4096  # events kept per reply stream (approximate trim)


class ReplyWriter:
    def __init__(self, redis: Redis, url: str | None = None) -> None:
        self.redis = redis
        self._batch: list[tuple[str, Sequence[Event], bool, asyncio.Future[None]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._blocking = BlockingRedis.from_url(url, socket_timeout=5, socket_connect_timeout=2) if url else None

    def first_token(self, key: str) -> FirstToken | None:
        """For an engine thread: write the first token of the reply stream ``key`` at once; False (the event
        then takes the usual way, through the relay) when Redis fails it."""
        blocking = self._blocking
        if blocking is None:
            return None

        def write(event: Event) -> bool:
            try:
                blocking.xadd(key, event.encode(), maxlen=MAXLEN, approximate=True)
            except (RedisError, OSError):
                return False
            return True

        return write

    def close(self) -> None:
        if self._blocking is not None:
            self._blocking.close()

    async def write(self, key: str, events: Sequence[Event], renew: bool = True) -> None:
        """Append ``events`` to the reply stream ``key`` (and renew its TTL); returns once Redis has them."""
        loop = asyncio.get_running_loop()
        if not self._batch:
            loop.call_soon(self._flush)  # after the relays this turn already woke
        done: asyncio.Future[None] = loop.create_future()
        self._batch.append((key, events, renew, done))
        await done

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, Sequence[Event], bool, asyncio.Future[None]]]) -> None:
        try:
            if len(batch) == 1 and len(batch[0][1]) == 1 and not batch[0][2]:
                key, (event,), _, _ = batch[0]
                await self.redis.xadd(key, event.encode(), maxlen=MAXLEN, approximate=True)
                replies: list[object] = [None]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key, events, renew, _ in batch:
                        for event in events:
                            pipe.xadd(key, event.encode(), maxlen=MAXLEN, approximate=True)
                        if renew:
                            pipe.expire(key, keys.REPLY_TTL)
                    replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # Redis is gone: every relay in the batch sees it
            for *_, done in batch:
                _settle(done, exc)
            return
        at = 0
        for _, events, renew, done in batch:  # each relay sees its own commands' first error, if any
            mine, at = replies[at:at + len(events) + renew], at + len(events) + renew
            _settle(done, next((reply for reply in mine if isinstance(reply, Exception)), None))


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its relay was cancelled
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
